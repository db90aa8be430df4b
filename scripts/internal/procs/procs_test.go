package procs

import (
	"os/exec"
	"testing"
	"time"
)

func TestStopAndExitStatus(t *testing.T) {
	s := &Set{Tag: "test"}
	p, err := s.Start("sleep", exec.Command("sleep", "30"))
	if err != nil {
		t.Skip(err)
	}
	if p.Exited() || p.Pid() <= 0 {
		t.Fatalf("exited %v, pid %d", p.Exited(), p.Pid())
	}
	if killed := p.Stop(5 * time.Second); killed {
		t.Error("sleep needed SIGKILL after SIGTERM")
	}
	if !p.Exited() || p.ExitStatus() != -1 || p.Err() == nil {
		t.Errorf("exited %v, status %d, err %v", p.Exited(), p.ExitStatus(), p.Err())
	}
	s.StopAll(time.Second) // already stopped: nothing to do

	q, err := s.Start("true", exec.Command("true"))
	if err != nil {
		t.Skip(err)
	}
	<-q.Done()
	if q.ExitStatus() != 0 || q.Err() != nil {
		t.Errorf("true: status %d, err %v", q.ExitStatus(), q.Err())
	}
}
