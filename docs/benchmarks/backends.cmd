exitwise bench backends runs/demo --batch-sizes 1,32 --images 512 --repeats 3 --out docs/benchmarks/backends.md
