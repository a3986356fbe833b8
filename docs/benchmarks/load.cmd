taskset -c 1 exitwise serve runs/demo --port 8090 --torch-threads 1 --max-queue-images 64   # in the background
exitwise bench http --url http://127.0.0.1:8090 --overload 1,2,4 --overload-deadline-ms 100 --duration 10 --client-cpus 0 --dataset fashion-mnist --json docs/benchmarks/overload.json --markdown docs/benchmarks/overload.md --figure docs/benchmarks/overload.png
taskset -c 1 exitwise serve runs/demo --port 8090 --torch-threads 1    # in the background
exitwise bench http --url http://127.0.0.1:8090 --deadlines 5,10,20,50 --deadline-loads 0.5,0.9 --duration 10 --client-cpus 0 --dataset fashion-mnist --json docs/benchmarks/deadlines.json --markdown docs/benchmarks/deadlines.md
