package procs

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

// BuildBenchTools builds spillway, scripts/benchtool's loadgen and its
// sink into dir, from the root of the module the working directory is in.
func BuildBenchTools(dir string) error {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return errors.New("run from inside the spillway module")
	}
	build := exec.Command("go", "build", "-o", dir+"/", "./cmd/spillway", "./scripts/benchtool/loadgen", "./scripts/benchtool/sink")
	build.Dir = filepath.Dir(mod)
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	return nil
}
