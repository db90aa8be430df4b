package procs

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
)

// SinkAddr starts cmd, a scripts/benchtool/sink, with start, and returns
// the data address the sink prints first, on stdout; the rest of its
// stdout is discarded. On an error after the start the sink is left
// running, for the caller to stop.
func SinkAddr(cmd *exec.Cmd, start func(*exec.Cmd) error) (string, error) {
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	if err := start(cmd); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("sink: %w", err)
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	var a struct{ Addr string }
	if err := json.Unmarshal([]byte(line), &a); err != nil {
		return "", fmt.Errorf("sink: first line %q: %w", line, err)
	}
	return a.Addr, nil
}
