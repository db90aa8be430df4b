// Command metricscost measures what Prometheus scraping costs spillway's
// ingest: in one spillway process, it runs the same load (POST /v1/batch,
// 100 events per request, 64 connections, closed loop) with and without a
// scraper reading /metrics every second, and prints events/s of each. The
// scraper is switched on and off in short slices of one continuous load, so
// that the machine's drift (other processes, the spool growing) falls on
// both sides alike.
//
//	go run ./scripts/metricscost                  # 15 s each way, in 3 s slices
//	go run ./scripts/metricscost -duration 30s -slice 1s   # steadier on a busy machine
//	go run ./scripts/metricscost -sync interval   # without fsync in the way
//
// It builds spillway and scripts/benchtool's loadgen and sink into a
// temporary directory; everything listens on 127.0.0.1 and shares the
// machine's cores, so compare the phases, not the absolute numbers.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"github.com/spillwayhq/spillway/internal/procstat"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

type loadResult struct {
	EventsPerS float64        `json:"events_ok_per_s"`
	P50ms      float64        `json:"p50_ms"`
	P99ms      float64        `json:"p99_ms"`
	Statuses   map[string]int `json:"non_200,omitempty"`
	Errors     map[string]int `json:"errors,omitempty"`
}

func main() {
	duration := flag.Duration("duration", 15*time.Second, "measured load each way (with and without scraping)")
	warmup := flag.Duration("warmup", 3*time.Second, "load before the first slice, not counted")
	slice := flag.Duration("slice", 3*time.Second, "length of one slice; slices alternate off,on,on,off,...")
	every := flag.Duration("scrape-every", time.Second, "scrape period in the scraping phase")
	conns := flag.Int("conns", 64, "loadgen connections")
	batch := flag.Int("batch", 100, "events per request")
	syncMode := flag.String("sync", "always", "spillway --sync")
	work := flag.String("work", "", "directory for binaries and the spool (default: a new temporary one, removed)")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("metricscost: ")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *duration, *slice, *warmup, *every, *conns, *batch, *syncMode, *work); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, duration, slice, warmup time.Duration, every time.Duration,
	conns, batch int, syncMode, work string) error {
	if work == "" {
		dir, err := os.MkdirTemp("", "spillway-metricscost-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		work = dir
	}
	bin := filepath.Join(work, "bin")
	log.Printf("building spillway, loadgen and sink into %s", bin)
	build := exec.CommandContext(ctx, "go", "build", "-o", bin+"/",
		"./cmd/spillway", "./scripts/benchtool/loadgen", "./scripts/benchtool/sink")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("go build (run from the repository root): %w", err)
	}

	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			_ = p.Process.Signal(syscall.SIGTERM)
		}
		for _, p := range procs {
			done := make(chan struct{})
			go func() { _ = p.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				_ = p.Process.Kill()
				<-done
			}
		}
	}()
	start := func(stdout io.Writer, name string, args ...string) (*exec.Cmd, error) {
		cmd := exec.Command(filepath.Join(bin, name), args...)
		cmd.Stdout, cmd.Stderr = stdout, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		procs = append(procs, cmd)
		return cmd, nil
	}

	// The sink counts what it receives, so delivery costs what it costs in
	// production; it is the same in both phases.
	pr, pw := io.Pipe()
	if _, err := start(pw, "sink", "--mode", "count"); err != nil {
		return err
	}
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read sink address: %w", err)
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	var sinkAddr struct{ Addr string }
	if err := json.Unmarshal([]byte(line), &sinkAddr); err != nil {
		return fmt.Errorf("sink said %q: %w", line, err)
	}

	addr, err := procstat.FreeAddr()
	if err != nil {
		return err
	}
	base := "http://" + addr
	sp, err := start(io.Discard, "spillway", "run", "--listen", addr, "--spool-dir", filepath.Join(work, "spool"),
		"--sync", syncMode, "--shutdown-timeout", "2s", "--log-level", "warn",
		"--destination", "sink=http://"+sinkAddr.Addr+"/")
	if err != nil {
		return err
	}
	if err := procstat.WaitReady(ctx, base, 20*time.Second); err != nil {
		return err
	}

	// The cost of one scrape, idle: spillway's CPU time over 200 scrapes.
	const idleScrapes = 200
	cpu0 := procstat.CPUTime(sp.Process.Pid)
	began := time.Now()
	for range idleScrapes {
		if _, err := scrapeOnce(ctx, base); err != nil {
			return err
		}
	}
	idleWall := time.Since(began) / idleScrapes
	idleCPU := (procstat.CPUTime(sp.Process.Pid) - cpu0) / idleScrapes

	res, err := measure(ctx, bin, base, sp.Process.Pid, duration, slice, warmup, every, conns, batch)
	if err != nil {
		return err
	}
	res.idleWall, res.idleCPU = idleWall, idleCPU
	res.rssMiB, res.hwMiB = memoryMiB(sp.Process.Pid)
	report(os.Stdout, res, duration, slice, conns, batch, syncMode)
	return nil
}

// sample is loadgen's count of accepted events at a time.
type sample struct {
	t      time.Time
	events float64
}

// window is one slice of the measurement, with or without scraping.
type window struct {
	scrape     bool
	start, end time.Time
	eventsPerS float64
	events     float64
	cpu        time.Duration // spillway's CPU time in the window
}

type result struct {
	windows       []window
	load          loadResult
	scrapes       int
	scrapeMean    time.Duration
	scrapeBytes   int
	rssMiB, hwMiB float64
	idleWall      time.Duration // one scrape, no load
	idleCPU       time.Duration // spillway's CPU time for one scrape, no load
}

// measure runs one loadgen for the whole measurement and switches the
// scraper on and off in slices, in the order off,on,on,off,off,on... so
// that a drift of the machine (other work, the spool growing) falls on
// both sides alike. Each slice's rate comes from loadgen's progress lines.
func measure(ctx context.Context, bin, base string, pid int, duration, slice, warmup, every time.Duration,
	conns, batch int) (*result, error) {
	n := int(2 * duration / slice)
	total := warmup + time.Duration(n)*slice + time.Second
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "loadgen"), "--url", base, "--endpoint", "/v1/batch",
		"--conns", fmt.Sprint(conns), "--batch", fmt.Sprint(batch),
		"--duration", total.String(), "--warmup", "0s", "--progress", "100ms")
	var out bytes.Buffer
	cmd.Stdout = &out
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	var mu sync.Mutex
	var samples []sample
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			rest, ok := strings.CutPrefix(sc.Text(), "progress ")
			if !ok {
				continue
			}
			var p struct {
				TNs    int64   `json:"t_ns"`
				Events float64 `json:"events_ok"`
			}
			if json.Unmarshal([]byte(rest), &p) == nil {
				mu.Lock()
				samples = append(samples, sample{time.Unix(0, p.TNs), p.Events})
				mu.Unlock()
			}
		}
	}()

	res := &result{}
	var scraping sync.WaitGroup
	var scrapeTotal time.Duration
	time.Sleep(warmup)
	for i := range n {
		on := (i+1)/2%2 == 1 // off, on, on, off, off, on, ...
		w := window{scrape: on, start: time.Now()}
		cpu0 := procstat.CPUTime(pid)
		sctx, cancel := context.WithTimeout(ctx, slice)
		if on {
			scraping.Add(1)
			go func() {
				defer scraping.Done()
				for {
					began := time.Now()
					if b, err := scrapeOnce(sctx, base); err == nil {
						scrapeTotal += time.Since(began)
						res.scrapes++
						res.scrapeBytes = b
					} else if sctx.Err() == nil {
						log.Printf("scrape: %v", err)
					}
					select {
					case <-sctx.Done():
						return
					case <-time.After(every - time.Since(began)):
					}
				}
			}()
		}
		<-sctx.Done()
		cancel()
		scraping.Wait()
		w.end = time.Now()
		w.cpu = procstat.CPUTime(pid) - cpu0
		res.windows = append(res.windows, w)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("loadgen: %w", err)
	}
	<-read
	if err := json.Unmarshal(bytes.TrimSpace(out.Bytes()), &res.load); err != nil {
		return nil, fmt.Errorf("loadgen said %q: %w", out.String(), err)
	}
	if res.scrapes > 0 {
		res.scrapeMean = scrapeTotal / time.Duration(res.scrapes)
	}
	for i := range res.windows {
		w := &res.windows[i]
		w.events = at(samples, w.end) - at(samples, w.start)
		w.eventsPerS = w.events / w.end.Sub(w.start).Seconds()
	}
	return res, nil
}

// at interpolates the accepted-events count at t.
func at(s []sample, t time.Time) float64 {
	for i := 1; i < len(s); i++ {
		if !s[i].t.Before(t) {
			a, b := s[i-1], s[i]
			f := float64(t.Sub(a.t)) / float64(b.t.Sub(a.t))
			return a.events + f*(b.events-a.events)
		}
	}
	if len(s) == 0 {
		return 0
	}
	return s[len(s)-1].events
}

func scrapeOnce(ctx context.Context, base string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return int(n), err
}

func report(w io.Writer, r *result, duration, slice time.Duration, conns, batch int, syncMode string) {
	fmt.Fprintf(w, "\nPOST /v1/batch, %d events per request, %d connections, --sync=%s;\n", batch, conns, syncMode)
	fmt.Fprintf(w, "one load, %v with and %v without a scrape of /metrics every second, in %v slices\n\n", duration, duration, slice)
	type agg struct {
		events, secs float64
		cpu          time.Duration
		n            int
	}
	var sum [2]agg
	fmt.Fprintf(w, "%-6s %-16s %10s %14s\n", "slice", "phase", "events/s", "CPU us/event")
	for i, win := range r.windows {
		k := 0
		if win.scrape {
			k = 1
		}
		sum[k].events += win.events
		sum[k].secs += win.end.Sub(win.start).Seconds()
		sum[k].cpu += win.cpu
		sum[k].n++
		fmt.Fprintf(w, "%-6d %-16s %10.0f %14.2f\n", i+1, label(win.scrape), win.eventsPerS, perEvent(win.cpu, win.events))
	}
	if sum[0].n > 0 && sum[1].n > 0 {
		off, on := sum[0].events/sum[0].secs, sum[1].events/sum[1].secs
		offCPU, onCPU := perEvent(sum[0].cpu, sum[0].events), perEvent(sum[1].cpu, sum[1].events)
		fmt.Fprintf(w, "\n%-16s %8.0f events/s  %6.2f us CPU/event  (%d slices)\n", label(false), off, offCPU, sum[0].n)
		fmt.Fprintf(w, "%-16s %8.0f events/s  %6.2f us CPU/event  (%d slices)\n", label(true), on, onCPU, sum[1].n)
		fmt.Fprintf(w, "difference       %+8.1f%% events/s  %+6.1f%% CPU/event\n", (on-off)/off*100, (onCPU-offCPU)/offCPU*100)
	}
	fmt.Fprintf(w, "one scrape: %.1f KiB; idle %.1f ms, %.1f ms of spillway CPU; under load %.1f ms (%d scrapes)\n",
		float64(r.scrapeBytes)/1024, ms(r.idleWall), ms(r.idleCPU), ms(r.scrapeMean), r.scrapes)
	fmt.Fprintf(w, "whole load: p50 %.2f ms, p99 %.2f ms\n", r.load.P50ms, r.load.P99ms)
	for k, v := range r.load.Statuses {
		fmt.Fprintf(w, "  %d answers %s\n", v, k)
	}
	for k, v := range r.load.Errors {
		fmt.Fprintf(w, "  %d errors: %s\n", v, k)
	}
	fmt.Fprintf(w, "spillway RSS %.1f MiB, peak (VmHWM) %.1f MiB\n", r.rssMiB, r.hwMiB)
}

func perEvent(cpu time.Duration, events float64) float64 {
	if events == 0 {
		return 0
	}
	return float64(cpu.Nanoseconds()) / 1000 / events
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func label(scrape bool) string {
	if scrape {
		return "scrape every 1s"
	}
	return "no scraping"
}

// memoryMiB reads VmRSS and VmHWM of pid in MiB (0 where unreadable).
func memoryMiB(pid int) (rss, hwm float64) {
	r, _ := procstat.StatusKiB(pid, "VmRSS")
	h, _ := procstat.StatusKiB(pid, "VmHWM")
	return float64(r) / 1024, float64(h) / 1024
}
