package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spillwayhq/spillway/internal/procstat"
	"github.com/spillwayhq/spillway/scripts/internal/procs"
)

var httpc = &http.Client{Timeout: 3 * time.Second}

// spillway is one run of the server: one process, from its start to the
// kill, the cut or the final stop.
type spillway struct {
	run      int
	p        *procs.Proc
	addr     string
	log      string
	execAt   time.Time
	readyAt  time.Time
	whenFull string

	mu      sync.Mutex
	last    metrics // the latest scrape
	lastAt  time.Time
	prev    metrics   // the scrape before it
	hwmKiB  int64     // VmHWM, read every second and before the kill
	rssTop  rssSample // the largest VmRSS seen, split into anonymous and file-backed
	stopMon chan struct{}
	monDone chan struct{}
}

func (sw *spillway) base() string { return "http://" + sw.addr }

// startSpillway runs the binary with args and waits for /readyz. A
// process that exits first, or is not ready within ready, is an error
// holding the tail of its log.
func (s *soak) startSpillway(ctx context.Context, whenFull string, extra ...string) (*spillway, error) {
	addr, err := procstat.FreeAddr()
	if err != nil {
		return nil, err
	}
	s.runs++
	sw := &spillway{run: s.runs, addr: addr, whenFull: whenFull,
		log: filepath.Join(s.work, fmt.Sprintf("spillway-run%02d.log", s.runs))}
	logf, err := os.Create(sw.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own descriptor
	args := []string{"run", "--listen", addr, "--spool-dir", s.spoolDir(), "--sync", "always",
		"--when-full", whenFull, "--shutdown-timeout", "5s",
		"--destination", "healthy=" + s.healthy.url(),
		"--destination", "flap=" + s.flap.url() + fmt.Sprintf("?timeout=%s&backoff_max=%s", flapTimeout, s.cfg.flapBackoffMax)}
	args = append(args, extra...)
	cmd := exec.Command(s.spillwayBin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	sw.execAt = time.Now()
	if sw.p, err = s.procs.Start(fmt.Sprintf("spillway run %d", sw.run), cmd); err != nil {
		return nil, err
	}
	s.healthy.arm(sw.execAt)
	s.flap.arm(sw.execAt)
	deadline := sw.execAt.Add(s.cfg.readyWithin)
	for {
		if code, err := getStatus(sw.base() + "/readyz"); err == nil && code == http.StatusOK {
			sw.readyAt = time.Now()
			break
		}
		if sw.p.Exited() {
			return sw, fmt.Errorf("spillway run %d exited before ready (status %d); %s:\n%s",
				sw.run, sw.p.ExitStatus(), sw.log, tail(sw.log, 20))
		}
		if time.Now().After(deadline) {
			return sw, fmt.Errorf("spillway run %d not ready %v after its start; %s:\n%s",
				sw.run, s.cfg.readyWithin, sw.log, tail(sw.log, 20))
		}
		if !sleepCtx(ctx, 10*time.Millisecond) {
			return sw, ctx.Err()
		}
	}
	sw.stopMon, sw.monDone = make(chan struct{}), make(chan struct{})
	go sw.monitor()
	return sw, nil
}

// monitor scrapes /metrics and reads VmHWM every second until stopped.
func (sw *spillway) monitor() {
	defer close(sw.monDone)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		sw.sample()
		select {
		case <-sw.stopMon:
			return
		case <-t.C:
		}
	}
}

// sample scrapes once and reads the peak RSS; it returns the scrape, or
// nil when spillway did not answer.
func (sw *spillway) sample() metrics {
	if kib, err := procstat.StatusKiB(sw.p.Pid(), "VmHWM"); err == nil {
		rss, _ := procstat.StatusKiB(sw.p.Pid(), "VmRSS")
		anon, _ := procstat.StatusKiB(sw.p.Pid(), "RssAnon")
		file, _ := procstat.StatusKiB(sw.p.Pid(), "RssFile")
		sw.mu.Lock()
		sw.hwmKiB = max(sw.hwmKiB, kib)
		if rss > sw.rssTop.RSS {
			sw.rssTop = rssSample{RSS: rss, Anon: anon, File: file}
		}
		sw.mu.Unlock()
	}
	m, err := scrape(sw.base())
	if err != nil {
		return nil
	}
	sw.mu.Lock()
	sw.prev, sw.last, sw.lastAt = sw.last, m, time.Now()
	sw.mu.Unlock()
	return m
}

func (sw *spillway) latest() (last, prev metrics) {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	return sw.last, sw.prev
}

// rssSample is VmRSS with its anonymous (heap, stacks) and file-backed
// (Badger's memory-mapped files, the binary) parts, KiB.
type rssSample struct {
	RSS  int64 `json:"rss_kib"`
	Anon int64 `json:"anon_kib"`
	File int64 `json:"file_kib"`
}

func (sw *spillway) topRSS() rssSample {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	return sw.rssTop
}

func (sw *spillway) peakKiB() int64 {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	return sw.hwmKiB
}

func (sw *spillway) stopMonitor() {
	if sw.stopMon != nil {
		close(sw.stopMon)
		<-sw.monDone
		sw.stopMon = nil
	}
}

// metrics is one scrape of /metrics: each series, as printed
// (name{labels}), to its value.
type metrics map[string]float64

func scrape(base string) (metrics, error) {
	resp, err := httpc.Get(base + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: %s", resp.Status)
	}
	m := metrics{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m, sc.Err()
}

// sum adds the series of metric name whose labels include every one of
// labels (each `key="value"`); -1 when there is none.
func (m metrics) sum(name string, labels ...string) float64 {
	total, found := 0.0, false
	for k, v := range m {
		rest, ok := strings.CutPrefix(k, name)
		if !ok || rest != "" && rest[0] != '{' {
			continue
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(rest, l)
		}
		if match {
			total += v
			found = true
		}
	}
	if !found {
		return -1
	}
	return total
}

func (m metrics) dest(name, destination string) float64 {
	return m.sum(name, `destination="`+destination+`"`)
}

func getStatus(url string) (int, error) {
	resp, err := httpc.Get(url)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
