package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spillwayhq/spillway/internal/testkit"
)

// A sidecar idles beside every replica: with nothing to do, spillway must
// neither wake nor write. The bounds are twice issue #23's targets (20
// wake-ups a second, 0.1% of a core), counted by the kernel, so the
// machine's speed and load do not move them.
func TestIdleSpillwayNeitherWakesNorWrites(t *testing.T) {
	if _, err := os.Stat("/proc/self/task"); err != nil {
		t.Skip("needs Linux's /proc")
	}
	s := newSink(t)
	dir := filepath.Join(t.TempDir(), "spool")
	p := startSpillway(t, "", io.Discard, "--spool-dir", dir, "--destination", "sink="+s.URL)
	pid := p.cmd.Process.Pid
	time.Sleep(2 * time.Second) // start-up's own work is not idling
	start := time.Now()
	sw0, cpu0, err := testkit.Threads(pid)
	if err != nil {
		t.Fatal(err)
	}
	const window = 10 * time.Second
	time.Sleep(window)
	sw1, cpu1, err := testkit.Threads(pid)
	if err != nil {
		t.Fatal(err)
	}
	el := time.Since(start).Seconds()
	if perS := float64(sw1-sw0) / el; perS > 40 {
		t.Errorf("idle spillway woke %.1f times a second, want at most 40", perS)
	}
	if share := (cpu1 - cpu0).Seconds() / el; share > 0.002 {
		t.Errorf("idle spillway used %.3f%% of a core, want at most 0.2%%", 100*share)
	}
	err = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if info, err := d.Info(); err == nil && info.ModTime().After(start) {
			t.Errorf("idle spillway wrote %s", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Restarted (by a crash here) on a spool holding a backlog, spillway is
// ready and then delivers all of it.
func TestStartOnABacklogIsReadyThenDeliversEverything(t *testing.T) {
	s := newSink(t)
	s.setStatus(http.StatusServiceUnavailable)
	dir := filepath.Join(t.TempDir(), "spool")
	args := []string{"--spool-dir", dir, "--destination", "sink=" + s.URL, "--backoff-min", "100ms", "--backoff-max", "200ms"}
	p := startSpillway(t, "", io.Discard, args...)
	const batches, per = 120, 500 // several generations' worth
	for i := range batches {
		code, err := postBatch(t.Context(), http.DefaultClient, p.url(), "wk", trackEvents(fmt.Sprintf("b%d", i), per))
		if err != nil || code != http.StatusOK {
			t.Fatalf("batch %d: %d, %v", i, code, err)
		}
	}
	p.kill()
	s.setStatus(http.StatusOK)
	p = startSpillway(t, "", io.Discard, args...)
	testkit.Eventually(t, func() bool {
		unique, _ := s.Counts()
		return unique == batches*per
	}, "delivered %v of %d", func() any { u, _ := s.Counts(); return u }, batches*per)
	for i := range batches {
		for _, id := range []string{fmt.Sprintf("b%d-0", i), fmt.Sprintf("b%d-%d", i, per-1)} {
			if !s.Has(id) {
				t.Fatalf("%s not delivered", id)
			}
		}
	}
	if code := p.stop(); code != 0 {
		t.Errorf("exit status %d: %s", code, p.stderr)
	}
}
