package main

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// procs tracks every process the soak starts, so that each one is stopped
// by its PID on exit, on error and on Ctrl-C.
type procs struct {
	mu   sync.Mutex
	list []*proc
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // from Wait; read after done is closed
}

// start runs cmd in its own process group (so the terminal's Ctrl-C reaches
// only the soak, which then stops its children in order) and asks the
// kernel to SIGKILL it if the soak dies without cleaning up.
func (ps *procs) start(name string, cmd *exec.Cmd) (*proc, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitStatus is the process's exit code, -1 if a signal ended it; valid
// once it has exited.
func (p *proc) exitStatus() int {
	if p.cmd.ProcessState == nil {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// kill sends SIGKILL to the process (not its group: a child's own children
// are its business) and waits until it is gone.
func (p *proc) kill() {
	if !p.exited() {
		_ = p.cmd.Process.Kill()
	}
	<-p.done
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs. It returns whether
// the process had to be killed.
func (p *proc) stop(grace time.Duration) (killed bool) {
	if p.exited() {
		return false
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return false
	case <-time.After(grace):
	}
	p.kill()
	return true
}

// stopAll stops every process still running, newest first.
func (ps *procs) stopAll(grace time.Duration) {
	ps.mu.Lock()
	list := append([]*proc(nil), ps.list...)
	ps.mu.Unlock()
	for i := len(list) - 1; i >= 0; i-- {
		if list[i].stop(grace) {
			fmt.Fprintf(os.Stderr, "chaos: killed %s (pid %d) after %v\n", list[i].name, list[i].pid(), grace)
		}
	}
}

// fdStat is what a process holds open.
type fdStat struct {
	Total   int `json:"total"`
	Spool   int `json:"spool"`   // files under the spool directory
	Deleted int `json:"deleted"` // of those, files already removed
}

// openFDs classifies the descriptors pid holds open; Total is -1 if it
// cannot tell.
func openFDs(pid int, spoolDir string) fdStat {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fdStat{Total: -1}
	}
	st := fdStat{Total: len(entries)}
	for _, e := range entries {
		target, err := os.Readlink(dir + "/" + e.Name())
		if err != nil || !strings.HasPrefix(target, spoolDir+"/") {
			continue
		}
		st.Spool++
		if strings.HasSuffix(target, " (deleted)") {
			st.Deleted++
		}
	}
	return st
}
