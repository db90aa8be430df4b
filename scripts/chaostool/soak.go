package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spillwayhq/spillway/internal/powercut"
	"github.com/spillwayhq/spillway/scripts/internal/procs"
)

// How a run ends.
const (
	endKill  = "kill -9"
	endClean = "cut clean"
	endHarsh = "cut harsh"
	endLast  = "drain" // the last run: the load stops, the drain follows
	endDied  = "died"  // spillway exited by itself
)

// The fixed point of the per-run sample, and the sizes of the episodes.
const (
	sampleAfterReady = 3 * time.Second  // goroutines and fds of each run
	diskSlack        = 8 << 20          // a full disk: capacity = use + this
	dropMargin       = 8 << 20          // the drop run: --spool-max-bytes = spool + this
	dropDownMax      = 35 * time.Second // the drop run: longest the flapping destination refuses
	dropAfterFirst   = 5 * time.Second  // and how long it goes on refusing once drops began
	dropRunLen       = 60 * time.Second
)

// soak is the whole run: its processes, its destinations, its load, and
// what it observed.
type soak struct {
	cfg         config
	spillwayBin string
	work        string
	fuse        bool
	procs       procs.Set
	disk        *disk
	healthy     *sink
	flap        *sink
	flapper     *flapper
	load        *load
	rng         *rand.Rand // the schedule of crashes and episodes
	logFile     *os.File
	logMu       sync.Mutex

	start, loadEnd time.Time
	runs           int // spillway processes started
	cur            *spillway
	ackedMark      uint64 // events acknowledged before the current run

	maxRate, rate float64
	records       []*runRecord
	diskEp        *diskEpisode
	dropEp        *dropEpisode
	allowance     map[string]float64 // drops that may have gone uncounted at a kill, by destination
	findings      []string           // spillway misbehaviour seen during the soak
	fatal         error              // what stopped the soak early

	baseline, final idleSample
	drain           drainResult
	dlq             dlqResult
	floor           floorResult
}

// runRecord is one spillway process.
type runRecord struct {
	Run         int     `json:"run"`
	WhenFull    string  `json:"when_full"`
	MaxBytes    int64   `json:"spool_max_bytes,omitempty"`
	StartS      float64 `json:"start_s"` // since the soak began
	After       string  `json:"after"`   // how the previous run ended
	RemountMs   float64 `json:"remount_ms,omitempty"`
	ToReadyMs   float64 `json:"to_ready_ms"`
	ToDeliverMs float64 `json:"to_first_delivery_ms"` // -1: none during the run
	// The previous run's backlog at its end, which this start recovers.
	BacklogHealthy float64         `json:"backlog_healthy_at_cut"`
	BacklogFlap    float64         `json:"backlog_flap_at_cut"`
	Resent         float64         `json:"resent"`
	Goroutines     float64         `json:"goroutines"` // sampleAfterReady after ready
	FDs            fdStat          `json:"fds"`
	Generations    int             `json:"generations"`
	SpoolFiles     int             `json:"spool_files"`
	LenS           float64         `json:"length_s"`
	End            string          `json:"end"`
	PeakRSSKiB     int64           `json:"peak_rss_kib"`
	TopRSS         rssSample       `json:"top_rss_sample"`
	DroppedHealthy float64         `json:"dropped_healthy"`
	DroppedFlap    float64         `json:"dropped_flap"`
	EndBacklogH    float64         `json:"backlog_healthy_at_end"`
	EndBacklogF    float64         `json:"backlog_flap_at_end"`
	Cut            *powercut.Stats `json:"cut,omitempty"`
	NextSeq        int64           `json:"next_seq"` // from the "spool open" log line; -1 if absent
	Acked          uint64          `json:"acknowledged"`
	// Acknowledged events each sink had not received when the run ended
	// (for flap, dead letters included), counted by the soak itself.
	UndeliveredH uint64 `json:"undelivered_healthy_at_end"`
	UndeliveredF uint64 `json:"undelivered_flap_at_end"`

	sentAtEnd uint64 // events numbered when the run ended

	remount time.Duration // after this run's cut
}

type diskEpisode struct {
	AtS           float64 `json:"at_s"`
	ForS          float64 `json:"for_s"`
	Run           int     `json:"run"`
	UsedBytes     int64   `json:"used_bytes"`
	Capacity      int64   `json:"capacity_bytes"`
	During        answers `json:"answers_during"`
	UnreadySeen   bool    `json:"unready_seen"`
	RecoveredInMs float64 `json:"recovered_in_ms"` // space back to a 200; -1: never
	Died          bool    `json:"spillway_died"`
}

type dropEpisode struct {
	Run            int     `json:"run"`
	MaxBytes       int64   `json:"spool_max_bytes"`
	SentBefore     uint64  `json:"sent_before_end"` // events numbered before the drop run ended
	DroppedFlap    float64 `json:"dropped_flap"`
	DroppedHealthy float64 `json:"dropped_healthy"`
	LogLines       int     `json:"log_lines"`
}

type idleSample struct {
	Goroutines  float64 `json:"goroutines"`
	FDs         fdStat  `json:"fds"`
	SpoolBytes  int64   `json:"spool_bytes"`
	Generations int     `json:"generations"`
	SpoolFiles  int     `json:"spool_files"`
}

type drainResult struct {
	Took    time.Duration `json:"took_ns"`
	Drained bool          `json:"drained"`
	Trace   []string      `json:"trace,omitempty"`
}

type dlqResult struct {
	Letters  int            `json:"letters"`
	Bytes    int64          `json:"bytes"`
	ByReason map[string]int `json:"by_reason"`
	rejected bitset         // acked events dead-lettered for flap as rejected
	other    bitset         // dead-lettered with any other reason or destination
	Unknown  int            `json:"unknown"` // letters without a chaos messageId
	Dups     int            `json:"duplicates"`
	Err      string         `json:"error,omitempty"`
	// spillway's VmHWM before and after GET /admin/dlq, in run Run
	Run           int   `json:"run"`
	PeakBeforeKiB int64 `json:"peak_rss_before_kib"`
	PeakAfterKiB  int64 `json:"peak_rss_after_kib"`
}

type floorResult struct {
	Bytes     int64         `json:"bytes"`
	Metric    float64       `json:"metric_bytes"`
	Dedupe    int64         `json:"dedupe_index_bytes"` // spillway_dedupe_index_bytes when last measured
	Allowed   int64         `json:"allowed_bytes"`
	Took      time.Duration `json:"took_ns"`
	Reached   bool          `json:"reached"`
	FinalExit int           `json:"final_exit"`
}

func newSoak(c config, spillwayBin, work string, fuse bool) *soak {
	return &soak{cfg: c, spillwayBin: spillwayBin, work: work, fuse: fuse, procs: procs.Set{Tag: "chaos"},
		rng: rand.New(rand.NewPCG(c.seed, 0x6368616f73)), allowance: map[string]float64{}}
}

func (s *soak) spoolDir() string { return s.disk.spoolDir() }

// logf writes to chaos.log and, with the time since the start, to stderr.
func (s *soak) logf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.logMu.Lock()
	defer s.logMu.Unlock()
	el := 0.0
	if !s.start.IsZero() {
		el = time.Since(s.start).Seconds()
	}
	line := fmt.Sprintf("chaos: %7.1fs %s\n", el, msg)
	fmt.Fprint(os.Stderr, line)
	if s.logFile != nil {
		fmt.Fprint(s.logFile, line)
	}
}

func (s *soak) finding(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.logf("FINDING: %s", msg)
	s.logMu.Lock()
	s.findings = append(s.findings, msg)
	s.logMu.Unlock()
}

func (s *soak) since(t time.Time) float64 { return t.Sub(s.start).Seconds() }

// run sets up, soaks, drains and measures. It returns an error when the
// soak could not go on (a refused start-up, an interrupt); the checks
// themselves are made by result.
func (s *soak) run(ctx context.Context) error {
	var err error
	if s.logFile, err = os.Create(filepath.Join(s.work, "chaos.log")); err != nil {
		return err
	}
	s.start = time.Now()
	s.logf("seed %d, duration %v, work dir %s (rerun: %s)", s.cfg.seed, s.cfg.duration, s.work, s.cfg.rerun)
	pcLog, err := os.Create(filepath.Join(s.work, "powercut.log"))
	if err != nil {
		return err
	}
	var pcMu sync.Mutex
	pcLogf := func(format string, args ...any) {
		pcMu.Lock()
		defer pcMu.Unlock()
		fmt.Fprintf(pcLog, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
	}
	if s.disk, err = newDisk(s.work, s.fuse, s.cfg.strictDirs, s.cfg.seed, pcLogf); err != nil {
		return fmt.Errorf("mount the power-cut filesystem: %w", err)
	}
	if s.cfg.premade {
		if err := s.disk.premake(); err != nil {
			return fmt.Errorf("make the spool directory: %w", err)
		}
		s.logf("the spool directory was made, and its parent fsynced, before spillway's first start (--spool-dir-premade)")
	}
	if s.healthy, err = newSink("healthy", false); err != nil {
		return err
	}
	if s.flap, err = newSink("flap", true); err != nil {
		return err
	}
	s.flapper = &flapper{s: s.flap, rng: rand.New(rand.NewPCG(s.cfg.seed, 0x666c6170))}
	s.load = &load{clients: s.cfg.clients, poisonFrac: s.cfg.poisonFrac, seed: s.cfg.seed}
	where := "a plain directory"
	if s.fuse {
		where = "the power-cut filesystem (a new file's fsync makes its name durable, as on ext4)"
		if s.cfg.strictDirs {
			where = "the power-cut filesystem (POSIX-strict: a name is durable once its directory is fsynced)"
		}
	}
	s.logf("destinations: healthy %s, flap %s (timeout %v, backoff_max %v); spool %s on %s",
		s.healthy.url(), s.flap.url(), flapTimeout, s.cfg.flapBackoffMax, s.spoolDir(), where)

	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	flapCtx, stopFlap := context.WithCancel(ctx)
	defer stopFlap()
	var bg sync.WaitGroup
	defer bg.Wait()

	if err := s.chaos(ctx, loadCtx, flapCtx, &bg); err != nil {
		s.fatal = err
		stopLoad()
		stopFlap()
		return err
	}
	stopLoad()
	stopFlap()
	bg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	s.countAcked(s.records[len(s.records)-1])
	s.logf("load stopped: %d events acknowledged (%s); the flapping destination is healthy from now on", s.load.acked.count(), s.load.answers())
	return s.finish(ctx)
}

// chaos is the soak proper: the first start, the measurement of the
// maximum rate, then runs ended by kill -9 or power cuts until the
// duration is over.
func (s *soak) chaos(ctx, loadCtx, flapCtx context.Context, bg *sync.WaitGroup) error {
	sw, err := s.startRun(ctx, "block", 0, "fresh")
	if err != nil {
		return err
	}
	// The floor: a fresh spool, idle.
	if !sleepCtx(ctx, time.Until(sw.readyAt.Add(sampleAfterReady))) {
		return ctx.Err()
	}
	s.baseline = s.idle(sw)
	s.logf("fresh spool, idle %v after ready: %.0f goroutines, %d fds (%d on %d spool files), %d generations, %s on disk",
		sampleAfterReady, s.baseline.Goroutines, s.baseline.FDs.Total, s.baseline.FDs.Spool, s.baseline.SpoolFiles, s.baseline.Generations, mib(s.baseline.SpoolBytes))
	rec := s.records[0]
	rec.Goroutines, rec.FDs, rec.Generations, rec.SpoolFiles = s.baseline.Goroutines, s.baseline.FDs, s.baseline.Generations, s.baseline.SpoolFiles

	s.load.setTarget(sw.base())
	bg.Go(func() { s.load.run(loadCtx) })
	if !sleepCtx(ctx, time.Second) {
		return ctx.Err()
	}
	a0, t0 := s.load.ackedEvents.Load(), time.Now()
	if !sleepCtx(ctx, s.cfg.measureFor) {
		return ctx.Err()
	}
	s.maxRate = float64(s.load.ackedEvents.Load()-a0) / time.Since(t0).Seconds()
	s.rate = s.maxRate / 2
	if s.rate < 100 {
		return fmt.Errorf("spillway acknowledged only %.0f events/s closed-loop (%s): too little to soak", s.maxRate, s.load.answers())
	}
	s.load.setRate(s.rate)
	s.logf("closed loop, %d clients: %.0f events/s acknowledged; the load runs at half, %.0f events/s", s.cfg.clients, s.maxRate, s.rate)
	bg.Go(func() { s.flapper.run(flapCtx) })

	s.loadEnd = time.Now().Add(s.cfg.duration)
	D := s.cfg.duration
	diskAt := time.Now().Add(time.Duration((0.15 + 0.2*s.rng.Float64()) * float64(D)))
	diskFor := min(max(D/12, 10*time.Second), 60*time.Second)
	dropAt := time.Now().Add(D / 2)
	if !s.fuse {
		diskAt = time.Time{}
		s.logf("WARNING: no full-disk episode: it needs the power-cut filesystem")
	}
	if D < 2*time.Minute {
		dropAt = time.Time{}
		s.logf("WARNING: no drop episode: --duration under 2m leaves no room for its %v run", dropRunLen)
	}
	nextFull := "drop-oldest"
	isDropRun := false
	for {
		length := s.cfg.minRun + time.Duration(s.rng.Int64N(int64(s.cfg.maxRun-s.cfg.minRun)+1))
		if isDropRun {
			length = dropRunLen
		}
		endAt := sw.readyAt.Add(length)
		withDisk := !diskAt.IsZero() && s.diskEp == nil && diskAt.Before(endAt)
		if !dropAt.IsZero() && s.dropEp == nil && !isDropRun && endAt.After(dropAt) {
			// The drop episode needs a restart soon after dropAt.
			endAt = maxTime(sw.readyAt.Add(s.cfg.minRun), minTime(endAt, dropAt))
		}
		if withDisk {
			diskAt = maxTime(diskAt, sw.readyAt.Add(sampleAfterReady+time.Second))
			endAt = maxTime(endAt, diskAt.Add(diskFor+5*time.Second))
		}
		last := !endAt.Before(s.loadEnd)
		if last {
			endAt = s.loadEnd
		}
		died := s.during(ctx, sw, endAt, withDisk, diskAt, diskFor, isDropRun)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if isDropRun {
			s.flapper.release()
		}
		if last && !died {
			s.endRun(sw, endLast)
			return nil
		}
		end := endDied
		if !died {
			end = s.pickEnd()
		}
		if err := s.crash(sw, end); err != nil {
			return err
		}
		// The next run: drop-oldest toggled at each restart, and once, past
		// half of the soak, a run with a spool bound meant to be exceeded.
		whenFull, maxBytes := nextFull, int64(0)
		isDropRun = !dropAt.IsZero() && s.dropEp == nil && !time.Now().Before(dropAt) &&
			time.Until(s.loadEnd) > dropRunLen/2
		if isDropRun {
			whenFull = "drop-oldest"
			maxBytes = diskUsage(s.spoolDir()) + dropMargin
			s.dropEp = &dropEpisode{Run: s.runs + 1, MaxBytes: maxBytes}
		}
		nextFull = map[string]string{"block": "drop-oldest", "drop-oldest": "block"}[whenFull]
		if sw, err = s.startRun(ctx, whenFull, maxBytes, end); err != nil {
			return err
		}
		s.load.setTarget(sw.base())
		if time.Now().After(s.loadEnd) {
			// A slow recovery ran past the end: this run is the last.
			if !sleepCtx(ctx, sampleAfterReady) {
				return ctx.Err()
			}
			s.sampleRun(sw)
			s.endRun(sw, endLast)
			return nil
		}
	}
}

// pickEnd chooses how a run ends: kill -9 or a clean or harsh power cut.
func (s *soak) pickEnd() string {
	n := s.rng.IntN(10)
	switch {
	case !s.fuse || n < 4:
		return endKill
	case n < 7:
		return endClean
	}
	return endHarsh
}

// startRun starts spillway and records the recovery: to ready now, to the
// first delivery when the run ends.
func (s *soak) startRun(ctx context.Context, whenFull string, maxBytes int64, after string) (*spillway, error) {
	var extra []string
	if maxBytes > 0 {
		extra = []string{"--spool-max-bytes", fmt.Sprint(maxBytes)}
	}
	rec := &runRecord{Run: s.runs + 1, WhenFull: whenFull, MaxBytes: maxBytes, After: after, ToDeliverMs: -1}
	if n := len(s.records); n > 0 {
		prev := s.records[n-1]
		rec.BacklogHealthy, rec.BacklogFlap = prev.EndBacklogH, prev.EndBacklogF
		if prev.remount > 0 {
			rec.RemountMs = ms(prev.remount)
		}
	}
	s.records = append(s.records, rec)
	sw, err := s.startSpillway(ctx, whenFull, extra...)
	if sw != nil {
		s.cur = sw
		rec.StartS = s.since(sw.execAt)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		s.finding("start-up refused after %s (run %d): %v", after, rec.Run, err)
		return nil, fmt.Errorf("start-up refused after %s (run %d; the spool is kept in %s)", after, rec.Run, s.disk.dir)
	}
	rec.ToReadyMs = ms(sw.readyAt.Sub(sw.execAt))
	rec.NextSeq = nextSeq(sw.log)
	s.checkNumbering()
	bound := "default bound"
	if maxBytes > 0 {
		bound = "--spool-max-bytes " + mib(maxBytes)
	}
	s.logf("run %d: started (--when-full=%s, %s) after %s, ready in %.0f ms, recovering a backlog of %.0f (healthy) and %.0f (flap) events",
		rec.Run, whenFull, bound, after, rec.ToReadyMs, rec.BacklogHealthy, rec.BacklogFlap)
	return sw, nil
}

// during waits out a run until endAt, taking its fixed-point sample and
// running the full-disk or the drop episode when they fall in it. It
// reports whether spillway exited by itself.
func (s *soak) during(ctx context.Context, sw *spillway, endAt time.Time, withDisk bool, diskAt time.Time, diskFor time.Duration, isDropRun bool) bool {
	if isDropRun {
		s.flapper.force(refusing)
		s.logf("run %d: drop episode: the flapping destination refuses connections, the spool bounded at %s, until %v after the first drop (at most %v)",
			sw.run, mib(s.dropEp.MaxBytes), dropAfterFirst, dropDownMax)
	}
	if !s.waitAlive(ctx, sw, sw.readyAt.Add(sampleAfterReady)) {
		return true
	}
	s.sampleRun(sw)
	if isDropRun {
		until := sw.readyAt.Add(dropDownMax)
		for time.Now().Before(until) {
			if last, _ := sw.latest(); last.dest("spillway_events_dropped_total", "flap") > 0 {
				until = minTime(until, time.Now().Add(dropAfterFirst))
			}
			if !s.waitAlive(ctx, sw, minTime(until, time.Now().Add(time.Second))) {
				return true
			}
		}
		s.flapper.force(healthy)
		last, _ := sw.latest()
		s.logf("run %d: drop episode: %.0f events dropped for flap; the flapping destination is healthy again for the rest of the run",
			sw.run, last.dest("spillway_events_dropped_total", "flap"))
	}
	if withDisk {
		if !s.waitAlive(ctx, sw, diskAt) {
			return true
		}
		if s.fullDisk(ctx, sw, diskFor) {
			return true
		}
	}
	return !s.waitAlive(ctx, sw, endAt)
}

// waitAlive waits until t; false if spillway exited meanwhile.
func (s *soak) waitAlive(ctx context.Context, sw *spillway, t time.Time) bool {
	for time.Now().Before(t) {
		if sw.p.Exited() {
			s.finding("spillway run %d exited by itself (status %d) %.1fs after ready; %s:\n%s",
				sw.run, sw.p.ExitStatus(), time.Since(sw.readyAt).Seconds(), sw.log, tail(sw.log, 15))
			return false
		}
		if !sleepCtx(ctx, min(100*time.Millisecond, time.Until(t))) {
			return true
		}
	}
	return !sw.p.Exited()
}

// sampleRun takes a run's fixed-point sample: goroutines, fds and
// generations sampleAfterReady after ready, with the load running.
func (s *soak) sampleRun(sw *spillway) {
	rec := s.records[len(s.records)-1]
	m := sw.sample()
	rec.Goroutines = m.sum("go_goroutines")
	rec.Resent = m.sum("spillway_events_resent_total")
	rec.FDs = openFDs(sw.p.Pid(), s.spoolDir())
	rec.Generations, rec.SpoolFiles = generations(s.spoolDir())
}

// fullDisk fills the disk for diskFor: the capacity is set a little above
// what is in use, then lifted. It reports whether spillway died.
func (s *soak) fullDisk(ctx context.Context, sw *spillway, diskFor time.Duration) (died bool) {
	fs := s.disk.current()
	used := fs.Used()
	ep := &diskEpisode{AtS: s.since(time.Now()), ForS: diskFor.Seconds(), Run: sw.run, UsedBytes: used,
		Capacity: used + diskSlack, RecoveredInMs: -1}
	s.diskEp = ep
	fs.SetCapacity(ep.Capacity)
	s.logf("run %d: full disk: capacity set to %s (%s in use) for %v", sw.run, mib(ep.Capacity), mib(used), diskFor)
	before := s.load.answers()
	end := time.Now().Add(diskFor)
	for time.Now().Before(end) && ctx.Err() == nil {
		if code, err := getStatus(sw.base() + "/readyz"); err == nil && code == http.StatusServiceUnavailable {
			ep.UnreadySeen = true
		}
		if sw.p.Exited() {
			break
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
	fs.SetCapacity(0)
	back := time.Now()
	ep.During = s.load.answers().minus(before)
	if sw.p.Exited() {
		ep.Died = true
		s.finding("spillway run %d exited (status %d) with its disk full; %s:\n%s", sw.run, sw.p.ExitStatus(), sw.log, tail(sw.log, 15))
		return true
	}
	for deadline := back.Add(30 * time.Second); time.Now().Before(deadline) && ctx.Err() == nil; {
		if code, err := getStatus(sw.base() + "/readyz"); err == nil && code == http.StatusOK && s.load.lastAck.Load() > back.UnixNano() {
			ep.RecoveredInMs = ms(time.Since(back))
			break
		}
		sleepCtx(ctx, 20*time.Millisecond)
	}
	s.logf("run %d: full disk over: answers while full %s; unready seen %v; space back to ready and a 200 in %.0f ms",
		sw.run, ep.During, ep.UnreadySeen, ep.RecoveredInMs)
	return false
}

// endRun takes a run's last figures before it is killed or stopped.
func (s *soak) endRun(sw *spillway, end string) {
	rec := s.records[len(s.records)-1]
	sw.stopMonitor()
	deliveredH, deliveredF := s.healthy.delivered.count(), s.flap.delivered.count()
	m := sw.sample()
	sent := s.load.next.Load()
	last, prev := sw.latest()
	if m == nil {
		m = last
	} else {
		// What spillway holds undelivered is at most what was ever sent
		// and not delivered (counted before the scrape, sent after it),
		// plus what a sink took and spillway has not yet seen answered:
		// a few batches in flight (concurrency 4 of 500 events), given
		// 20,000 here. The sequence numbers skipped after a crash are
		// 2^20 at a time.
		for _, d := range []struct {
			name      string
			delivered uint64
		}{{"healthy", deliveredH}, {"flap", deliveredF}} {
			gauge := m.dest("spillway_destination_backlog_events", d.name)
			if bound := float64(sent-d.delivered) + 20000; gauge > bound {
				s.finding("run %d: spillway_destination_backlog_events{destination=%q} is %.0f, more than the %d events ever sent and not delivered there: it counts events that do not exist",
					sw.run, d.name, gauge, sent-d.delivered)
			}
		}
	}
	rec.End = end
	rec.LenS = time.Since(sw.readyAt).Seconds()
	rec.PeakRSSKiB = sw.peakKiB()
	rec.TopRSS = sw.topRSS()
	rec.EndBacklogH = m.dest("spillway_destination_backlog_events", "healthy")
	rec.EndBacklogF = m.dest("spillway_destination_backlog_events", "flap")
	rec.DroppedHealthy = max(0, m.dest("spillway_events_dropped_total", "healthy"))
	rec.DroppedFlap = max(0, m.dest("spillway_events_dropped_total", "flap"))
	if at := s.healthy.firstAfter.Load(); at > 0 {
		rec.ToDeliverMs = ms(time.Unix(0, at).Sub(sw.execAt))
	}
	// Drops between the last scrape and the kill go uncounted: when the
	// count was still rising, allow one more scrape interval's worth.
	if prev != nil && m != nil {
		for _, d := range []string{"healthy", "flap"} {
			rise := m.dest("spillway_events_dropped_total", d) - prev.dest("spillway_events_dropped_total", d)
			if rise > 0 && end != endLast {
				s.allowance[d] += rise
				s.logf("run %d: %s was still dropping events when it ended (%.0f in the last second): %.0f more allowed as uncounted drops",
					sw.run, d, rise, rise)
			}
		}
	}
	if s.dropEp != nil && s.dropEp.Run == sw.run {
		s.dropEp.DroppedFlap, s.dropEp.DroppedHealthy = rec.DroppedFlap, rec.DroppedHealthy
		s.dropEp.LogLines = countLines(sw.log, "dropping the oldest undelivered events")
	}
}

// crash ends the run: kill -9 or a power cut (which kills too).
func (s *soak) crash(sw *spillway, end string) error {
	s.endRun(sw, end)
	rec := s.records[len(s.records)-1]
	switch end {
	case endKill, endDied:
		sw.p.Kill()
		s.countAcked(rec)
	case endClean, endHarsh:
		mode := powercut.Clean
		if end == endHarsh {
			mode = powercut.Harsh
		}
		st, remount, err := s.disk.cut(mode, func() error { sw.p.Kill(); s.countAcked(rec); return nil })
		rec.Cut = &st
		rec.remount = remount
		if err != nil {
			return fmt.Errorf("run %d: %s: %w", sw.run, end, err)
		}
	}
	s.logf("run %d: %s after %.1fs; backlog healthy %.0f, flap %.0f; peak RSS %s; dropped so far healthy %.0f, flap %.0f%s",
		sw.run, end, rec.LenS, rec.EndBacklogH, rec.EndBacklogF, mib(rec.PeakRSSKiB<<10), rec.DroppedHealthy, rec.DroppedFlap, cutNote(rec.Cut))
	return nil
}

func cutNote(st *powercut.Stats) string {
	if st == nil {
		return ""
	}
	return fmt.Sprintf("; the cut lost %d unsynced bytes in %d files and %d directory changes (kept %d bytes, %d torn writes)",
		st.BytesDropped, st.FilesUnsynced, st.DirOpsDropped, st.BytesKept, st.TornWrites)
}

// finish drains, reads the dead letters, waits for the spool to shrink,
// stops spillway cleanly and starts it once more, idle, to compare with
// the fresh spool.
func (s *soak) finish(ctx context.Context) error {
	sw := s.cur
	sw.stopMonitor()
	t0 := time.Now()
	deadline := t0.Add(s.cfg.drainWithin)
	lastTrace := time.Time{}
	for {
		m, err := scrape(sw.base())
		bh, bf := -1.0, -1.0
		if err == nil {
			bh = m.dest("spillway_destination_backlog_events", "healthy")
			bf = m.dest("spillway_destination_backlog_events", "flap")
		}
		if time.Since(lastTrace) >= 10*time.Second {
			lastTrace = time.Now()
			line := fmt.Sprintf("%.0fs: backlog healthy %.0f, flap %.0f", time.Since(t0).Seconds(), bh, bf)
			s.drain.Trace = append(s.drain.Trace, line)
			s.logf("drain %s", line)
		}
		if bh == 0 && bf == 0 {
			s.drain.Drained = true
			break
		}
		if sw.p.Exited() {
			s.finding("spillway run %d exited by itself (status %d) during the drain; %s:\n%s", sw.run, sw.p.ExitStatus(), sw.log, tail(sw.log, 15))
			return errors.New("spillway died during the drain")
		}
		if time.Now().After(deadline) {
			s.finding("delivery stalled: %v after the load stopped, with every destination healthy, the backlog is still healthy %.0f, flap %.0f (run %d, %s)",
				s.cfg.drainWithin, bh, bf, sw.run, sw.log)
			break
		}
		if !sleepCtx(ctx, 250*time.Millisecond) {
			return ctx.Err()
		}
	}
	s.drain.Took = time.Since(t0)
	if s.drain.Drained {
		s.logf("drained in %.1fs", s.drain.Took.Seconds())
		// A delivery the gauge counted may still be in the sink's handler.
		sleepCtx(ctx, 500*time.Millisecond)
	}
	sw.sample()
	s.dlq.Run, s.dlq.PeakBeforeKiB = sw.run, sw.peakKiB()
	s.readDLQ(sw)
	sw.sample()
	s.dlq.PeakAfterKiB = sw.peakKiB()
	s.waitFloor(ctx, sw)
	rec := s.records[len(s.records)-1]
	if m := sw.sample(); m != nil {
		rec.EndBacklogH = m.dest("spillway_destination_backlog_events", "healthy")
		rec.EndBacklogF = m.dest("spillway_destination_backlog_events", "flap")
	}
	rec.PeakRSSKiB = max(rec.PeakRSSKiB, sw.peakKiB())
	rec.TopRSS = sw.topRSS()
	if killed := sw.p.Stop(30 * time.Second); killed {
		s.finding("spillway run %d did not stop within 30s of SIGTERM", sw.run)
	}
	s.floor.FinalExit = sw.p.ExitStatus()
	if s.floor.FinalExit != 0 {
		s.finding("spillway run %d exited %d after SIGTERM; %s:\n%s", sw.run, s.floor.FinalExit, sw.log, tail(sw.log, 15))
	}
	// Once more, idle, to compare with the fresh spool.
	sw, err := s.startRun(ctx, "block", 0, "SIGTERM")
	if err != nil {
		return err
	}
	if !sleepCtx(ctx, time.Until(sw.readyAt.Add(sampleAfterReady))) {
		return ctx.Err()
	}
	s.final = s.idle(sw)
	s.sampleRun(sw)
	s.endRun(sw, "SIGTERM")
	s.logf("after the drain and a restart, idle %v after ready: %.0f goroutines, %d fds (%d on %d spool files), %d generations, %s on disk",
		sampleAfterReady, s.final.Goroutines, s.final.FDs.Total, s.final.FDs.Spool, s.final.SpoolFiles, s.final.Generations, mib(s.final.SpoolBytes))
	if killed := sw.p.Stop(30 * time.Second); killed || sw.p.ExitStatus() != 0 {
		s.finding("spillway run %d: SIGTERM with nothing to do: exit status %d", sw.run, sw.p.ExitStatus())
	}
	return nil
}

func (s *soak) idle(sw *spillway) idleSample {
	m := sw.sample()
	gens, files := generations(s.spoolDir())
	return idleSample{Goroutines: m.sum("go_goroutines"), FDs: openFDs(sw.p.Pid(), s.spoolDir()),
		SpoolBytes: diskUsage(s.spoolDir()), Generations: gens, SpoolFiles: files}
}

// readDLQ lists every dead letter through the admin API.
func (s *soak) readDLQ(sw *spillway) {
	d := &s.dlq
	d.ByReason = map[string]int{}
	client := &http.Client{Timeout: 2 * time.Minute}
	resp, err := client.Get(sw.base() + "/admin/dlq")
	if err != nil {
		d.Err = err.Error()
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		d.Err = fmt.Sprintf("GET /admin/dlq: %s: %s", resp.Status, b)
		return
	}
	if err := parseDLQ(resp.Body, d); err != nil {
		d.Err = err.Error()
	}
	s.logf("dead letters: %d (%s), by reason %v; spillway's peak RSS %s before listing them, %s after",
		d.Letters, mib(d.Bytes), d.ByReason, mib(d.PeakBeforeKiB<<10), mib(sw.peakKiB()<<10))
}

// waitFloor waits for the spool to shrink back to a fresh spool's size
// plus the dead letters and the messageId index, which keeps what was
// stored within --dedupe-window up to its own bound, by design.
func (s *soak) waitFloor(ctx context.Context, sw *spillway) {
	f := &s.floor
	f.Allowed = s.baseline.SpoolBytes + s.dlq.Bytes + 8<<20
	t0 := time.Now()
	for {
		f.Bytes = diskUsage(s.spoolDir())
		if m, err := scrape(sw.base()); err == nil {
			f.Metric = m.sum("spillway_spool_bytes")
			f.Dedupe = int64(m.sum("spillway_dedupe_index_bytes"))
			f.Allowed = s.baseline.SpoolBytes + s.dlq.Bytes + f.Dedupe + 8<<20
		}
		if f.Bytes <= f.Allowed {
			f.Reached = true
			break
		}
		if time.Since(t0) > s.cfg.floorWithin || sw.p.Exited() {
			break
		}
		if !sleepCtx(ctx, time.Second) {
			return
		}
	}
	f.Took = time.Since(t0)
	s.logf("spool after the drain: %s on disk (spillway_spool_bytes %s), allowed %s (fresh %s + dead letters %s + messageId index %s + 8 MiB), after %.0fs",
		mib(f.Bytes), mib(int64(f.Metric)), mib(f.Allowed), mib(s.baseline.SpoolBytes), mib(s.dlq.Bytes), mib(f.Dedupe), f.Took.Seconds())
}

// shutdown stops whatever is still running and unmounts, leaving the spool
// in the disk directory.
func (s *soak) shutdown() {
	s.procs.StopAll(10 * time.Second)
	if s.disk != nil {
		if err := s.disk.unmount(); err != nil {
			fmt.Fprintf(os.Stderr, "chaos: unmount %s: %v\n", s.disk.mnt, err)
		}
	}
	for _, k := range []*sink{s.healthy, s.flap} {
		if k != nil {
			k.close()
		}
	}
	if s.logFile != nil {
		s.logFile.Close()
	}
}

// diskUsage is what du reports: allocated blocks, not apparent sizes
// (Badger maps sparse, preallocated files).
func diskUsage(dir string) int64 {
	var total int64
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil // removed while we looked: Badger rotates files
		}
		if info, err := d.Info(); err == nil {
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				total += st.Blocks * 512
			}
		}
		return nil
	})
	return total
}

// generations counts the spool's gen-* directories, and its files.
func generations(dir string) (gens, files int) {
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		switch {
		case err != nil:
		case d.IsDir() && strings.HasPrefix(d.Name(), "gen-") && filepath.Dir(p) == dir:
			gens++
		case d.Type().IsRegular():
			files++
		}
		return nil
	})
	return gens, files
}

func countLines(path, substr string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return strings.Count(string(b), substr)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return -1
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// countAcked records how many events the run acknowledged: every one
// answered 200 since the previous run ended, counted once the run's
// process is gone (or the load stopped), so that no 200 comes later. It
// also counts, independently of spillway's gauge, the acknowledged events
// each sink had not received by then.
func (s *soak) countAcked(rec *runRecord) {
	now := s.load.ackedEvents.Load()
	rec.Acked = now - s.ackedMark
	s.ackedMark = now
	acked := s.load.acked.count()
	rec.UndeliveredH = acked - intersect(&s.load.acked, &s.healthy.delivered)
	rec.UndeliveredF = acked - intersect(&s.load.acked, &s.flap.delivered)
	rec.sentAtEnd = s.load.next.Load()
}

// checkNumbering holds the newest start to the promise that sequence
// numbers never go back: each event a run acknowledged took a number at or
// above the run's first, so the next run must start above them all.
func (s *soak) checkNumbering() {
	n := len(s.records)
	if n < 2 {
		return
	}
	prev, cur := s.records[n-2], s.records[n-1]
	if prev.NextSeq < 0 || cur.NextSeq < 0 {
		return
	}
	if want := prev.NextSeq + int64(prev.Acked); cur.NextSeq < want {
		s.finding("numbering went back: run %d opened the spool at next_seq %d, below run %d's %d plus the %d events it acknowledged (%d); run %d ended with %s",
			cur.Run, cur.NextSeq, prev.Run, prev.NextSeq, prev.Acked, want, prev.Run, prev.End)
	}
}

// nextSeq reads next_seq from the spool's "spool open" log line; -1 when
// there is none.
func nextSeq(log string) int64 {
	b, err := os.ReadFile(log)
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(b)) {
		if !strings.Contains(line, `msg="spool open"`) {
			continue
		}
		_, v, ok := strings.Cut(line, " next_seq=")
		if !ok {
			return -1
		}
		v, _, _ = strings.Cut(strings.TrimSpace(v), " ")
		var n int64
		if _, err := fmt.Sscan(v, &n); err != nil {
			return -1
		}
		return n
	}
	return -1
}
