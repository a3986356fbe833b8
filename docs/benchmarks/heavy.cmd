taskset -c 1 exitwise bench engine runs/fmnist-rgb-bench --batch-sizes 1,32 --images 1000 --batch1-images 200 --repeats 2 --threads 1 --json docs/benchmarks/heavy-engine.json --markdown docs/benchmarks/heavy-engine.md
taskset -c 1 exitwise serve runs/fmnist-rgb-bench --port 8090 --torch-threads 1    # in the background
exitwise bench http --url http://127.0.0.1:8090 --client wrk --client-cpus 0 --concurrency 1,16 --duration 10 --rounds 2 --dataset fashion-mnist --oracle docs/benchmarks/heavy-engine.json --json docs/benchmarks/heavy-http.json --markdown docs/benchmarks/heavy-http.md
