exitwise bench train --config configs/fmnist.yaml --set cpu_threads=1 --steps 5 --warmup 1 --rounds 3 --device cpu --double-backward --markdown docs/benchmarks/train.md --json
