// Package procs tracks the processes the measurement scripts under scripts/
// start (the bench runner's and the chaos soak's), so that each one is
// stopped by its PID on exit, on error and on Ctrl-C (Linux).
package procs

import (
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Set is every process a tool has started. Its zero value is ready to use
// once Tag is set.
type Set struct {
	// Tag names the tool in what StopAll prints: "<Tag>: killed ...".
	Tag string

	mu   sync.Mutex
	list []*Proc
}

// Proc is one started process.
type Proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // from Wait; read after done is closed
}

// Start runs cmd in its own process group (so the terminal's Ctrl-C reaches
// only the tool, which then stops its children in order) and asks the
// kernel to SIGKILL it if the tool dies without cleaning up.
func (s *Set) Start(name string, cmd *exec.Cmd) (*Proc, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	s.mu.Lock()
	s.list = append(s.list, p)
	s.mu.Unlock()
	return p, nil
}

// Pid is the process's ID.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed once the process has exited and been waited for.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is what Wait returned; valid once Done is closed.
func (p *Proc) Err() error { return p.err }

// Exited reports whether the process has exited and been waited for.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitStatus is the process's exit code, -1 if a signal ended it; valid
// once it has exited.
func (p *Proc) ExitStatus() int {
	if p.cmd.ProcessState == nil {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Signal sends sig to the process, not to its group: a child's own children
// are its business. It does nothing once the process has exited.
func (p *Proc) Signal(sig syscall.Signal) {
	if !p.Exited() {
		_ = p.cmd.Process.Signal(sig)
	}
}

// Kill sends SIGKILL to the process (not its group) and waits until it is
// gone.
func (p *Proc) Kill() {
	if !p.Exited() {
		_ = p.cmd.Process.Kill()
	}
	<-p.done
}

// Stop sends SIGTERM, waits up to grace, then SIGKILLs. It returns whether
// the process had to be killed.
func (p *Proc) Stop(grace time.Duration) (killed bool) {
	if p.Exited() {
		return false
	}
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return false
	case <-time.After(grace):
	}
	p.Kill()
	return true
}

// StopAll stops every process still running, newest first, and says on
// stderr which had to be killed.
func (s *Set) StopAll(grace time.Duration) {
	s.mu.Lock()
	list := append([]*Proc(nil), s.list...)
	s.mu.Unlock()
	for i := len(list) - 1; i >= 0; i-- {
		if list[i].Stop(grace) {
			fmt.Fprintf(os.Stderr, "%s: killed %s (pid %d) after %v\n", s.Tag, list[i].name, list[i].Pid(), grace)
		}
	}
}
