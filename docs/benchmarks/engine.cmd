taskset -c 1 exitwise bench engine runs/demo --batch-sizes 1,32 --images 2000 --batch1-images 300 --repeats 3 --threads 1 --json docs/benchmarks/engine.json --markdown docs/benchmarks/engine.md
