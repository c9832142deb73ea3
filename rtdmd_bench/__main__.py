from rtdmd_bench.cli import main

main()
