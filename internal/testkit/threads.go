package testkit

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Threads sums what Linux counts per thread of pid: context switches
// (voluntary and involuntary, each a wake-up of a sleeping or preempted
// thread) and CPU time to the nanosecond (schedstat), where the process
// totals in /proc/PID/stat count only 10 ms ticks. A thread that exits
// between two calls takes its counts with it. The idle test and
// scripts/bench measure an idle spillway with it.
func Threads(pid int) (switches int64, cpu time.Duration, err error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, task := range tasks {
		dir := fmt.Sprintf("/proc/%d/task/%s/", pid, task.Name())
		if b, err := os.ReadFile(dir + "status"); err == nil {
			for line := range strings.Lines(string(b)) {
				if k, v, ok := strings.Cut(line, ":"); ok && strings.HasSuffix(k, "voluntary_ctxt_switches") {
					n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
					switches += n
				}
			}
		}
		if b, err := os.ReadFile(dir + "schedstat"); err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				ns, _ := strconv.ParseInt(f[0], 10, 64)
				cpu += time.Duration(ns)
			}
		}
	}
	return switches, cpu, nil
}
