package procstat

import (
	"os"
	"testing"
)

func TestStatusReadsOurOwnMemory(t *testing.T) {
	for _, f := range []string{"VmRSS", "VmHWM"} {
		if kib, err := StatusKiB(os.Getpid(), f); err != nil || kib <= 0 {
			t.Errorf("%s: %d, %v", f, kib, err)
		}
	}
	if _, err := StatusKiB(os.Getpid(), "NoSuchField"); err == nil {
		t.Error("a missing field: want an error")
	}
}

func TestCPUTimeGrowsWithWork(t *testing.T) {
	before := CPUTime(os.Getpid())
	x := 0
	for i := 0; i < 200_000_000; i++ {
		x += i % 7
	}
	if after := CPUTime(os.Getpid()); after <= before || x == 0 {
		t.Fatalf("CPU time %v then %v after a busy loop", before, after)
	}
}
