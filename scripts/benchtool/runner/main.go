// Command runner is scripts/bench: it runs the workloads of issue #5 against
// the null server (the HTTP ceiling) and against a fresh spillway forwarding
// to the counting sink, all on loopback, and prints one table. See
// scripts/benchtool/README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/spillwayhq/spillway/internal/procstat"
	"github.com/spillwayhq/spillway/scripts/internal/procs"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

type config struct {
	quick        bool
	duration     time.Duration
	warmup       time.Duration
	down         time.Duration
	drainMax     time.Duration
	conns        int
	only         string
	halfRate     float64
	work         string
	keep         bool
	jsonOut      string
	spillwayArgs []string
}

type stringsFlag []string

func (s *stringsFlag) String() string     { return strings.Join(*s, " ") }
func (s *stringsFlag) Set(v string) error { *s = append(*s, v); return nil }

var _ flag.Value = (*stringsFlag)(nil)

type runner struct {
	cfg      config
	bin      string
	spillway string
	work     string
	procs    procs.Set

	null, sink, failing *sinkProc
	rows                []*row
}

func main() {
	os.Exit(run())
}

func run() int {
	var c config
	var bin, spillway string
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.BoolVar(&c.quick, "quick", false, "short runs: everything in under two minutes")
	fs.DurationVar(&c.duration, "duration", 0, "measurement window of each run (default 20s, --quick 4s)")
	fs.DurationVar(&c.warmup, "warmup", 0, "load before each window, not counted (default 3s, --quick 1s)")
	fs.DurationVar(&c.down, "down", 0, "W4: how long the sink is down (default 60s, --quick 10s)")
	fs.DurationVar(&c.drainMax, "drain-max", 0, "W4: longest wait for the backlog to drain (default 180s, --quick 30s)")
	fs.IntVar(&c.conns, "conns", 64, "load generator connections")
	fs.StringVar(&c.only, "only", "W1,W2,W3,R50,W4", "workloads to run, comma-separated; idle (no traffic, a burst, a backlog restart: several minutes), W1off, W2off, W1flag, W1block and W1privacy only when named")
	fs.Float64Var(&c.halfRate, "half-rate", 0, "events/s for R50 and W4 (default: half of W1's measured rate)")
	fs.StringVar(&c.work, "work", "", "directory for spools and logs (default: a new temporary directory)")
	fs.BoolVar(&c.keep, "keep", false, "keep the work directory (spools and logs)")
	fs.StringVar(&c.jsonOut, "json", "", "also write every measurement to this JSON file")
	fs.Var((*stringsFlag)(&c.spillwayArgs), "spillway-arg", "extra argument for spillway run, repeatable")
	fs.StringVar(&bin, "bin", "", "directory holding the loadgen and sink binaries (scripts/bench builds them)")
	fs.StringVar(&spillway, "spillway", "", "spillway binary (default: BIN/spillway)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	def := func(d *time.Duration, full, quick time.Duration) {
		if *d == 0 {
			*d = full
			if c.quick {
				*d = quick
			}
		}
	}
	def(&c.duration, 20*time.Second, 4*time.Second)
	def(&c.warmup, 3*time.Second, time.Second)
	def(&c.down, 60*time.Second, 10*time.Second)
	def(&c.drainMax, 180*time.Second, 30*time.Second)
	if bin == "" {
		fmt.Fprintln(os.Stderr, "bench: --bin is required (run scripts/bench, which builds everything)")
		return 2
	}
	if spillway == "" {
		spillway = filepath.Join(bin, "spillway")
	}

	r := &runner{cfg: c, bin: bin, spillway: spillway, work: c.work, procs: procs.Set{Tag: "bench"}}
	if r.work == "" {
		w, err := os.MkdirTemp("", "spillway-bench-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		r.work = w
	} else if err := os.MkdirAll(r.work, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if isTmpfs(r.work) {
		fmt.Fprintf(os.Stderr, "bench: warning: %s is on tmpfs, where fsync costs nothing; use --work on a real disk\n", r.work)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C kills the runner; Pdeathsig takes the children
	}()
	err := r.runAll(ctx)
	r.procs.StopAll(10 * time.Second)
	r.printTable(os.Stdout)
	if c.jsonOut != "" {
		if b, jerr := json.MarshalIndent(r.rows, "", "  "); jerr == nil {
			_ = os.WriteFile(c.jsonOut, b, 0o644)
		}
	}
	if c.keep || err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(os.Stderr, "bench: spools and logs kept in %s\n", r.work)
	} else if c.work == "" {
		os.RemoveAll(r.work)
	}
	switch {
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(os.Stderr, "bench: interrupted")
		return 130
	case err != nil:
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	return 0
}

func isTmpfs(dir string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(dir, &st) == nil && st.Type == 0x01021994
}

func (r *runner) selected(name string) bool {
	for _, w := range strings.Split(r.cfg.only, ",") {
		if strings.EqualFold(strings.TrimSpace(w), name) {
			return true
		}
	}
	return false
}

func (r *runner) runAll(ctx context.Context) error {
	fmt.Fprintf(os.Stderr, "bench: %s, %d s windows, work dir %s\n", header(r.cfg), int(r.cfg.duration.Seconds()), r.work)
	var err error
	if r.null, err = r.startSink(ctx, "null", "--mode", "null"); err != nil {
		return err
	}
	if r.sink, err = r.startSink(ctx, "sink", "--mode", "count"); err != nil {
		return err
	}
	if r.failing, err = r.startSink(ctx, "failing", "--mode", "fail", "--status", "503"); err != nil {
		return err
	}
	sinkDest := "sink=http://" + r.sink.addr + "/"
	batch := loadSpec{endpoint: "/v1/batch", duration: r.cfg.duration, warmup: r.cfg.warmup}
	track := loadSpec{endpoint: "/v1/track", duration: r.cfg.duration, warmup: r.cfg.warmup}

	var w1 *row
	if r.selected("W1") {
		if w1, err = r.closedLoop(ctx, "W1", "batch x100, 64 conns", batch, nil, []string{sinkDest}); err != nil {
			return err
		}
	}
	if err := r.dedupeOff(ctx, "W1", w1, batch, sinkDest); err != nil {
		return err
	}
	if err := r.contracts(ctx, w1, batch, sinkDest); err != nil {
		return err
	}
	var w2 *row
	if r.selected("W2") {
		if w2, err = r.closedLoop(ctx, "W2", "track x1, 64 conns", track, nil, []string{sinkDest}); err != nil {
			return err
		}
	}
	if err := r.dedupeOff(ctx, "W2", w2, track, sinkDest); err != nil {
		return err
	}
	if r.selected("W3") {
		var ceiling *loadResult
		if w1 != nil {
			ceiling = w1.Ceiling // the same load: no need to measure it twice
		}
		w3, err := r.closedLoop(ctx, "W3", "W1 + a 503 destination", batch, ceiling,
			[]string{sinkDest, "failing=http://" + r.failing.addr + "/"})
		if err != nil {
			return err
		}
		if w1 != nil && w1.DeliveredPerS > 0 {
			w3.Notes = append(w3.Notes, fmt.Sprintf("healthy sink got %.2f x its W1 rate", w3.DeliveredPerS/w1.DeliveredPerS))
		}
	}
	half := r.cfg.halfRate
	if half == 0 && w1 != nil && w1.Spillway != nil {
		half = w1.Spillway.EventsPerS / 2
	}
	var r50 *row
	if r.selected("R50") || r.selected("W4") {
		if half <= 0 {
			return errors.New("R50 and W4 need W1's rate: run W1 too or give --half-rate")
		}
	}
	if r.selected("R50") {
		spec := batch
		spec.rate = half
		if r50, err = r.closedLoop(ctx, "R50", "W1 at half its rate", spec, nil, []string{sinkDest}); err != nil {
			return err
		}
	}
	if r.selected("W4") {
		var ceiling *loadResult
		if r50 != nil {
			ceiling = r50.Ceiling
		}
		if err := r.outage(ctx, half, ceiling, sinkDest); err != nil {
			return err
		}
	}
	if r.selected("idle") {
		if err := r.idle(ctx, sinkDest); err != nil {
			return err
		}
	}
	return nil
}

// dedupeOff runs NAMEoff, if selected: workload name (on, its row, when
// it ran) with --dedupe-window 0. De-duplication is on by default, so its
// cost is name's rate over NAMEoff's.
func (r *runner) dedupeOff(ctx context.Context, name string, on *row, spec loadSpec, sinkDest string) error {
	if !r.selected(name + "off") {
		return nil
	}
	spec.spillwayArgs = []string{"--dedupe-window", "0"}
	var ceiling *loadResult
	if on != nil {
		ceiling = on.Ceiling
	}
	off, err := r.closedLoop(ctx, name+"off", name+", --dedupe-window 0", spec, ceiling, []string{sinkDest})
	if err != nil {
		return err
	}
	if on != nil && on.Spillway != nil && off.Spillway.EventsPerS > 0 {
		off.Notes = append(off.Notes, fmt.Sprintf("%s (de-duplication on) took %.3f x %soff's events/s", name, on.Spillway.EventsPerS/off.Spillway.EventsPerS, name))
	}
	return nil
}

// row is one line of the table, and the JSON record of one workload.
type row struct {
	Name, Desc string
	Ceiling    *loadResult `json:",omitempty"` // null server, same load
	Spillway   *loadResult `json:",omitempty"`

	DeliveredPerS   float64 // at the sink, over the load window (W4: while draining)
	BacklogAtEnd    int64   // events accepted but not yet at the sink when the load stopped
	PeakRSSKiB      int64   // VmHWM
	MaxSampledRSS   int64   // largest VmRSS sample, KiB
	SpoolAllocBytes int64   // on disk (allocated blocks)
	SpoolAppBytes   int64   // apparent size
	SpoolEvents     uint64  // events the spool size is divided by
	FailingRequests uint64  `json:",omitempty"`

	// W4 only.
	BacklogAtUp    uint64  `json:",omitempty"`
	FirstDeliveryS float64 `json:",omitempty"`
	DrainS         float64 `json:",omitempty"`
	Drained        bool    `json:",omitempty"`

	Idle *idleResult `json:",omitempty"` // the idle workload only

	Notes []string `json:",omitempty"`
}

// closedLoop runs one load against the null server (unless ceiling is
// given) and then against a fresh spillway.
func (r *runner) closedLoop(ctx context.Context, name, desc string, spec loadSpec, ceiling *loadResult, dests []string) (*row, error) {
	rw := &row{Name: name, Desc: desc, Ceiling: ceiling}
	r.rows = append(r.rows, rw)
	fmt.Fprintf(os.Stderr, "bench: %s (%s)\n", name, desc)
	var err error
	if rw.Ceiling == nil {
		if rw.Ceiling, err = r.load(ctx, r.null.addr, spec, name+" null"); err != nil {
			return rw, err
		}
	}
	for _, s := range []*sinkProc{r.sink, r.failing} {
		if _, err := s.call("POST", "/reset"); err != nil {
			return rw, err
		}
	}
	sp, err := r.startSpillway(ctx, name, dests, spec.spillwayArgs...)
	if err != nil {
		return rw, err
	}
	defer sp.p.Stop(15 * time.Second)
	smp := startSampler(r.sink, sp.p.Pid())
	res, err := r.load(ctx, sp.addr, spec, name+" spillway")
	if err != nil {
		smp.finish()
		return rw, err
	}
	rw.Spillway = res
	rw.SpoolAllocBytes, rw.SpoolAppBytes, _ = diskUsage(sp.spool)
	rw.SpoolEvents = res.TotalEventsOK
	rw.PeakRSSKiB, _ = procstat.StatusKiB(sp.p.Pid(), "VmHWM")
	ss := smp.finish()
	rw.MaxSampledRSS = maxRSS(ss)
	from, err1 := eventsAt(ss, time.Unix(0, res.WindowStartNs))
	to, err2 := eventsAt(ss, time.Unix(0, res.WindowEndNs))
	if err1 == nil && err2 == nil && res.WindowS > 0 {
		rw.DeliveredPerS = (to - from) / res.WindowS
	}
	if len(ss) > 0 {
		rw.BacklogAtEnd = int64(res.TotalEventsOK) - int64(ss[len(ss)-1].events)
	}
	if f, err := r.failing.count(); err == nil && f.Requests > 0 {
		rw.FailingRequests = f.Requests
		rw.Notes = append(rw.Notes, fmt.Sprintf("the 503 destination got %d requests", f.Requests))
	}
	if sp.p.Exited() {
		return rw, fmt.Errorf("spillway exited during %s: %v\n%s", name, sp.p.Err(), tail(sp.log, 15))
	}
	return rw, nil
}

// outage is W4: the sink is down for cfg.down while load runs at rate, then
// comes back; with the load still running, we time how long spillway takes
// to deliver the backlog and catch up with the live load.
func (r *runner) outage(ctx context.Context, rate float64, ceiling *loadResult, sinkDest string) error {
	rw := &row{Name: "W4", Desc: fmt.Sprintf("sink down %v at half rate", r.cfg.down), Ceiling: ceiling}
	r.rows = append(r.rows, rw)
	fmt.Fprintf(os.Stderr, "bench: W4 (%s, %.0f events/s)\n", rw.Desc, rate)
	if _, err := r.sink.call("POST", "/reset"); err != nil {
		return err
	}
	if _, err := r.sink.call("POST", "/down"); err != nil {
		return err
	}
	defer r.sink.call("POST", "/up") //nolint:errcheck // best effort: the sink is ours
	sp, err := r.startSpillway(ctx, "W4", []string{sinkDest})
	if err != nil {
		return err
	}
	defer sp.p.Stop(15 * time.Second)
	smp := startSampler(r.sink, sp.p.Pid())
	spec := loadSpec{endpoint: "/v1/batch", rate: rate, duration: r.cfg.down + r.cfg.drainMax}
	lr, err := r.startLoad(sp.addr, spec, "W4 spillway")
	if err != nil {
		smp.finish()
		return err
	}
	if err := sleepCtx(ctx, r.cfg.down); err != nil {
		smp.finish()
		return err
	}
	// Everything accepted so far is the backlog. spillway's own counter is
	// exact; the loadgen's progress lags by up to 100 ms.
	if v, ok := sp.receivedTotal(); ok {
		rw.BacklogAtUp = uint64(v)
	} else {
		rw.BacklogAtUp = lr.progress.Load()
		rw.Notes = append(rw.Notes, "no spillway_events_received_total: backlog from the loadgen")
	}
	rw.SpoolAllocBytes, rw.SpoolAppBytes, _ = diskUsage(sp.spool)
	rw.SpoolEvents = rw.BacklogAtUp
	before, err := r.sink.count()
	if err != nil {
		smp.finish()
		return err
	}
	tUp := time.Now()
	if _, err := r.sink.call("POST", "/up"); err != nil {
		smp.finish()
		return err
	}
	// Drained means caught up with the live load: the sink has everything
	// spillway received, less what a fifth of a second of load keeps in
	// flight. Reading spillway's counter before the sink's keeps the
	// comparison on the safe side.
	tolerance := rate / 5
	var tFirst time.Time
	var delivered uint64
	for {
		recv, ok := sp.receivedTotal()
		if !ok {
			recv = float64(lr.progress.Load())
		}
		c, err := r.sink.count()
		now := time.Now()
		if err == nil {
			delivered = c.Events - before.Events
			if tFirst.IsZero() && c.FirstNs != 0 {
				tFirst = time.Unix(0, c.FirstNs)
			}
			if delivered >= rw.BacklogAtUp && float64(c.Events) >= recv-tolerance {
				rw.Drained = true
				rw.DrainS = now.Sub(tUp).Seconds()
				break
			}
		}
		if now.Sub(tUp) > r.cfg.drainMax || lr.p.Exited() {
			rw.DrainS = now.Sub(tUp).Seconds()
			rw.Notes = append(rw.Notes, fmt.Sprintf("NOT drained after %.0f s: %d delivered since the sink came back, backlog was %d", rw.DrainS, delivered, rw.BacklogAtUp))
			break
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			smp.finish()
			return err
		}
	}
	if !tFirst.IsZero() {
		rw.FirstDeliveryS = tFirst.Sub(tUp).Seconds()
	}
	if rw.DrainS > 0 {
		rw.DeliveredPerS = float64(delivered) / rw.DrainS
	}
	lr.p.Signal(syscall.SIGINT) // stop the load; the loadgen reports what it did
	res, err := lr.wait(ctx)
	if err != nil {
		smp.finish()
		return err
	}
	rw.Spillway = res
	rw.PeakRSSKiB, _ = procstat.StatusKiB(sp.p.Pid(), "VmHWM")
	ss := smp.finish()
	rw.MaxSampledRSS = maxRSS(ss)
	if len(ss) > 0 {
		rw.BacklogAtEnd = int64(res.TotalEventsOK) - int64(ss[len(ss)-1].events)
	}
	if sp.p.Exited() {
		return fmt.Errorf("spillway exited during W4: %v\n%s", sp.p.Err(), tail(sp.log, 15))
	}
	return nil
}

func header(c config) string {
	mode := "full"
	if c.quick {
		mode = "quick"
	}
	return fmt.Sprintf("%s, %s, %d CPUs, %d conns, %s", mode, runtime.Version(), runtime.NumCPU(), c.conns, time.Now().Format("2006-01-02 15:04"))
}
