package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/spillwayhq/spillway/internal/procstat"
	"github.com/spillwayhq/spillway/scripts/benchtool/internal/loadreport"
	"github.com/spillwayhq/spillway/scripts/internal/procs"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var httpc = &http.Client{Timeout: 5 * time.Second}

// sinkProc is a running bench sink.
type sinkProc struct {
	p     *procs.Proc
	addr  string // data
	admin string
}

type sinkCounts struct {
	Events   uint64 `json:"events"`
	Requests uint64 `json:"requests"`
	FirstNs  int64  `json:"first_ns"`
	LastNs   int64  `json:"last_ns"`
	NowNs    int64  `json:"now_ns"`
	Up       bool   `json:"up"`
}

func (r *runner) startSink(ctx context.Context, name string, args ...string) (*sinkProc, error) {
	first := make(chan string, 1)
	logf, err := os.Create(filepath.Join(r.work, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(r.bin, "sink"), args...)
	var once sync.Once
	cmd.Stdout = &lineWriter{fn: func(l string) { once.Do(func() { first <- l }) }}
	cmd.Stderr = logf
	p, err := r.procs.Start(name, cmd)
	if err != nil {
		return nil, err
	}
	select {
	case l := <-first:
		var a struct{ Addr, Admin string }
		if err := json.Unmarshal([]byte(l), &a); err != nil {
			return nil, fmt.Errorf("%s: bad first line %q", name, l)
		}
		return &sinkProc{p: p, addr: a.Addr, admin: a.Admin}, nil
	case <-p.Done():
		return nil, fmt.Errorf("%s exited: %v\n%s", name, p.Err(), tail(logf.Name(), 10))
	case <-time.After(10 * time.Second):
		return nil, fmt.Errorf("%s did not start", name)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *sinkProc) call(method, path string) (sinkCounts, error) {
	var c sinkCounts
	req, err := http.NewRequest(method, "http://"+s.admin+path, nil)
	if err != nil {
		return c, err
	}
	resp, err := httpc.Do(req)
	if err != nil {
		return c, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return c, fmt.Errorf("sink %s %s: %s: %s", method, path, resp.Status, b)
	}
	return c, json.Unmarshal(b, &c)
}

func (s *sinkProc) count() (sinkCounts, error) { return s.call(http.MethodGet, "/count") }

// spillwayProc is a running spillway with a fresh spool.
type spillwayProc struct {
	p     *procs.Proc
	addr  string
	spool string
	log   string
	// started is just before the exec, ready when /readyz first answered 200.
	started, ready time.Time
}

func (r *runner) startSpillway(ctx context.Context, name string, dests []string, extra ...string) (*spillwayProc, error) {
	spool := filepath.Join(r.work, name+".spool")
	if err := os.RemoveAll(spool); err != nil {
		return nil, err
	}
	return r.startSpillwayOn(ctx, name, spool, dests, 50*time.Millisecond, extra...)
}

// startSpillwayOn starts spillway on the spool directory given, fresh or
// not, and returns once /readyz, asked every poll, answers 200.
func (r *runner) startSpillwayOn(ctx context.Context, name, spool string, dests []string, poll time.Duration, extra ...string) (*spillwayProc, error) {
	addr, err := procstat.FreeAddr()
	if err != nil {
		return nil, err
	}
	sp := &spillwayProc{
		addr:  addr,
		spool: spool,
		log:   filepath.Join(r.work, name+".spillway.log"),
	}
	logf, err := os.OpenFile(sp.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own descriptor
	args := []string{"run", "--listen", addr, "--spool-dir", sp.spool, "--sync", "always",
		"--shutdown-timeout", "2s"}
	for _, d := range dests {
		args = append(args, "--destination", d)
	}
	args = append(args, r.cfg.spillwayArgs...)
	args = append(args, extra...)
	cmd := exec.Command(r.spillway, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	sp.started = time.Now()
	if sp.p, err = r.procs.Start("spillway "+name, cmd); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := httpc.Get("http://" + addr + "/readyz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				sp.ready = time.Now()
				return sp, nil
			}
		}
		select {
		case <-sp.p.Done():
			return nil, fmt.Errorf("spillway exited before ready (%v); %s:\n%s", sp.p.Err(), sp.log, tail(sp.log, 15))
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(poll):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("spillway not ready after 60s; %s:\n%s", sp.log, tail(sp.log, 15))
		}
	}
}

// receivedTotal sums spillway_events_received_total from /metrics; ok is
// false if the metric is not there.
func (sp *spillwayProc) receivedTotal() (float64, bool) {
	resp, err := httpc.Get("http://" + sp.addr + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	var sum float64
	found := false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "spillway_events_received_total") {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil && len(f) >= 2 {
			sum += v
			found = true
		}
	}
	return sum, found
}

// loadResult is loadgen's JSON line.
type loadResult = loadreport.Result

type loadSpec struct {
	endpoint string
	rate     float64 // events/s, 0: closed loop
	duration time.Duration
	warmup   time.Duration
	// spillwayArgs are added to spillway's flags for this workload.
	spillwayArgs []string
}

type loadRun struct {
	p        *procs.Proc
	out      bytes.Buffer
	progress atomic.Uint64 // events accepted so far, from --progress lines
	human    atomic.Value  // string: loadgen's human line
}

func (r *runner) startLoad(target string, s loadSpec, tag string) (*loadRun, error) {
	args := []string{"--url", "http://" + target, "--endpoint", s.endpoint,
		"--conns", strconv.Itoa(r.cfg.conns), "--duration", s.duration.String(),
		"--warmup", s.warmup.String(), "--progress", "100ms"}
	if s.rate > 0 {
		args = append(args, "--rate", strconv.FormatFloat(s.rate, 'f', 0, 64))
	}
	lr := &loadRun{}
	logf, err := os.OpenFile(filepath.Join(r.work, "loadgen.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(logf, "== %s: loadgen %s\n", tag, strings.Join(args, " "))
	cmd := exec.Command(filepath.Join(r.bin, "loadgen"), args...)
	cmd.Stdout = &lr.out
	cmd.Stderr = &lineWriter{fn: func(l string) {
		if rest, ok := strings.CutPrefix(l, "progress "); ok {
			var p struct {
				EventsOK uint64 `json:"events_ok"`
			}
			if json.Unmarshal([]byte(rest), &p) == nil {
				lr.progress.Store(p.EventsOK)
			}
			return
		}
		lr.human.Store(l)
		fmt.Fprintln(logf, l)
	}}
	lr.p, err = r.procs.Start("loadgen "+tag, cmd)
	if err != nil {
		logf.Close()
		return nil, err
	}
	go func() { <-lr.p.Done(); logf.Close() }()
	return lr, nil
}

// wait returns the loadgen's result; ctx cancellation stops the loadgen.
func (lr *loadRun) wait(ctx context.Context) (*loadResult, error) {
	select {
	case <-lr.p.Done():
	case <-ctx.Done():
		lr.p.Stop(2 * time.Second)
		return nil, ctx.Err()
	}
	if lr.p.Err() != nil {
		h, _ := lr.human.Load().(string)
		return nil, fmt.Errorf("loadgen: %v %s", lr.p.Err(), h)
	}
	var res loadResult
	line := bytes.TrimSpace(lr.out.Bytes())
	if err := json.Unmarshal(line, &res); err != nil {
		return nil, fmt.Errorf("loadgen output %q: %w", line, err)
	}
	if h, ok := lr.human.Load().(string); ok && os.Getenv("BENCH_VERBOSE") != "" {
		fmt.Fprintln(os.Stderr, "  ", h)
	}
	return &res, nil
}

func (r *runner) load(ctx context.Context, target string, s loadSpec, tag string) (*loadResult, error) {
	lr, err := r.startLoad(target, s, tag)
	if err != nil {
		return nil, err
	}
	return lr.wait(ctx)
}

// sample is one observation of the sink and spillway, every 100 ms.
type sample struct {
	t      time.Time
	events uint64 // at the sink
	rssKiB int64
}

type sampler struct {
	mu      sync.Mutex
	samples []sample
	stop    chan struct{}
	done    chan struct{}
}

func startSampler(sink *sinkProc, pid int) *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	take := func() {
		c, err := sink.count()
		rss, _ := procstat.StatusKiB(pid, "VmRSS")
		if err != nil {
			return
		}
		s.mu.Lock()
		s.samples = append(s.samples, sample{t: time.Unix(0, c.NowNs), events: c.Events, rssKiB: rss})
		s.mu.Unlock()
	}
	go func() {
		defer close(s.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		take()
		for {
			select {
			case <-s.stop:
				take()
				return
			case <-t.C:
				take()
			}
		}
	}()
	return s
}

func (s *sampler) finish() []sample {
	close(s.stop)
	<-s.done
	return s.samples
}

// eventsAt interpolates the sink's count at t.
func eventsAt(ss []sample, t time.Time) (float64, error) {
	if len(ss) == 0 {
		return 0, errors.New("no samples")
	}
	if !t.After(ss[0].t) {
		return float64(ss[0].events), nil
	}
	for i := 1; i < len(ss); i++ {
		if !t.After(ss[i].t) {
			a, b := ss[i-1], ss[i]
			f := float64(t.Sub(a.t)) / float64(b.t.Sub(a.t))
			return float64(a.events) + f*(float64(b.events)-float64(a.events)), nil
		}
	}
	return float64(ss[len(ss)-1].events), nil
}

func maxRSS(ss []sample) int64 {
	var m int64
	for _, s := range ss {
		m = max(m, s.rssKiB)
	}
	return m
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
