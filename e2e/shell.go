package e2e

// shellLib starts the session scripts that drive a supervisor in L1: it
// mounts cgroup2 where L1 has no cgroup file system yet, points rfm at
// the L2 images, and defines the shell functions they share:
//
//	rfm_serve     start `rfm serve` in the background (its pid in
//	              /tmp/serve.pid, its log /tmp/serve.log) and wait for
//	              its API
//	healthy NAME  wait, up to 4 minutes, until NAME's agent is healthy
const shellLib = `
set -u
grep -q ' /sys/fs/cgroup ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup
export RF_IMAGES="$L2"
rfm_serve() {
	"$RFM" serve --housekeeping 0 >>/tmp/serve.log 2>&1 & echo $! > /tmp/serve.pid
	local i=0; while ! "$RFM" ps >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done
}
healthy() { local i=0; while ! "$RFM" inspect "$1" -o json | grep -q '"state": "healthy"' && [ $i -lt 240 ]; do sleep 1; i=$((i+1)); done; }
`
