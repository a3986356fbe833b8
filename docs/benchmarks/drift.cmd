exitwise bench drift runs/demo --threads 1 --json docs/benchmarks/drift.json --markdown docs/benchmarks/drift.md --figure docs/benchmarks/drift.png
