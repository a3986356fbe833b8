exitwise bench calibration --repeat 7 --json
