package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// parseDLQ reads GET /admin/dlq's lines: a flapping destination's 400 for
// a poison event is the one expected reason; any other letter is noted.
func parseDLQ(r io.Reader, d *dlqResult) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 8<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		var l struct {
			Destination string          `json:"destination"`
			Reason      string          `json:"reason"`
			Event       json.RawMessage `json:"event"`
		}
		if err := json.Unmarshal(line, &l); err != nil {
			return fmt.Errorf("dead letter %d: %w", d.Letters+1, err)
		}
		d.Letters++
		d.Bytes += int64(len(line))
		d.ByReason[l.Destination+"/"+l.Reason]++
		found := false
		parseIDs(l.Event, func(n uint64, poison bool) {
			found = true
			set := &d.other
			if l.Destination == "flap" && l.Reason == "rejected" && poison {
				set = &d.rejected
			}
			d.Dups += set.add([]uint64{n})
		})
		if !found {
			d.Unknown++
		}
	}
	return sc.Err()
}

// check is one verdict of the soak.
type check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// result is the figures of the soak and its checks.
type result struct {
	Seed        uint64             `json:"seed"`
	FUSE        bool               `json:"fuse"`
	StrictDirs  bool               `json:"strict_directories"`
	DurationS   float64            `json:"duration_s"` // load and crashes
	TotalS      float64            `json:"total_s"`    // with the measurement, drain and checks
	MaxRate     float64            `json:"max_events_per_s"`
	Rate        float64            `json:"load_events_per_s"`
	Runs        int                `json:"runs"`
	Kills       int                `json:"kills"`
	CutsClean   int                `json:"cuts_clean"`
	CutsHarsh   int                `json:"cuts_harsh"`
	Died        int                `json:"died"`
	Answers     answers            `json:"answers"`
	Sent        uint64             `json:"events_sent"`
	Acked       uint64             `json:"acknowledged"`
	Poison      uint64             `json:"poison_acknowledged"`
	Healthy     destFig            `json:"healthy"`
	Flap        destFig            `json:"flap"`
	DeadLetters int                `json:"dead_letters"`
	DLQBytes    int64              `json:"dead_letter_bytes"`
	DLQByReason map[string]int     `json:"dead_letters_by_reason"`
	Lost        uint64             `json:"lost"`
	ReadyP50Ms  float64            `json:"to_ready_p50_ms"`
	ReadyMaxMs  float64            `json:"to_ready_max_ms"`
	DelivP50Ms  float64            `json:"to_first_delivery_p50_ms"`
	DelivMaxMs  float64            `json:"to_first_delivery_max_ms"`
	PeakRSSKiB  int64              `json:"peak_rss_kib"`
	Baseline    idleSample         `json:"fresh_idle"`
	Final       idleSample         `json:"final_idle"`
	Floor       floorResult        `json:"spool_after_drain"`
	Drain       drainResult        `json:"drain"`
	DiskEp      *diskEpisode       `json:"full_disk,omitempty"`
	DropEp      *dropEpisode       `json:"drop_episode,omitempty"`
	FlapModes   map[string]float64 `json:"flap_seconds_by_mode"`
	CutLoss     any                `json:"cut_losses"`
	RunsDetail  []*runRecord       `json:"runs_detail"`
	Findings    []string           `json:"findings"`
	Checks      []check            `json:"checks"`
	OK          bool               `json:"ok"`
	Fatal       string             `json:"fatal,omitempty"`
}

type destFig struct {
	Delivered  uint64   `json:"delivered"` // acknowledged events, each once
	Received   uint64   `json:"received"`  // events accepted, duplicates and unacknowledged included
	Duplicates uint64   `json:"duplicates"`
	Unacked    uint64   `json:"unacknowledged_delivered"`
	DeadLetter uint64   `json:"dead_lettered"`
	Dropped    float64  `json:"dropped"`
	Allowance  float64  `json:"drop_allowance"`
	Missing    uint64   `json:"missing"`
	Examples   []uint64 `json:"missing_examples,omitempty"`
	// Events numbered from DropWindow on were sent after every run that
	// dropped any ended: a drop cannot explain them.
	DropWindow   uint64 `json:"drop_window_end"`
	MissingAfter uint64 `json:"missing_after_drop_window"`
}

func (r *result) failed() int {
	n := 0
	for _, c := range r.Checks {
		if !c.OK {
			n++
		}
	}
	return n
}

func (r *result) add(name string, ok bool, format string, args ...any) {
	r.Checks = append(r.Checks, check{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
}

// result computes the figures and makes the checks.
func (s *soak) result() *result {
	r := &result{Seed: s.cfg.seed, FUSE: s.fuse, StrictDirs: s.cfg.strictDirs, DurationS: s.cfg.duration.Seconds(), TotalS: time.Since(s.start).Seconds(),
		MaxRate: s.maxRate, Rate: s.rate, Runs: len(s.records), Findings: s.findings,
		Baseline: s.baseline, Final: s.final, Floor: s.floor, Drain: s.drain, DiskEp: s.diskEp, DropEp: s.dropEp,
		RunsDetail: s.records, DLQByReason: s.dlq.ByReason, DeadLetters: s.dlq.Letters, DLQBytes: s.dlq.Bytes}
	if s.fatal != nil {
		r.Fatal = s.fatal.Error()
	}
	if s.disk != nil {
		r.CutLoss = s.disk.cutStats()
	}
	if s.flapper != nil {
		r.FlapModes = map[string]float64{}
		for m := range numModes {
			r.FlapModes[m.String()] = s.flapper.time[m].Seconds()
		}
	}
	var ready, deliv []float64
	for i, rec := range s.records {
		switch rec.End {
		case endKill:
			r.Kills++
		case endClean:
			r.CutsClean++
		case endHarsh:
			r.CutsHarsh++
		case endDied:
			r.Died++
		}
		r.PeakRSSKiB = max(r.PeakRSSKiB, rec.PeakRSSKiB)
		if i > 0 && rec.ToReadyMs > 0 && rec.After != "SIGTERM" {
			ready = append(ready, rec.ToReadyMs)
			if rec.ToDeliverMs >= 0 {
				deliv = append(deliv, rec.ToDeliverMs)
			}
		}
	}
	r.ReadyP50Ms, r.ReadyMaxMs = percentile(ready, 0.5), percentile(ready, 1)
	r.DelivP50Ms, r.DelivMaxMs = percentile(deliv, 0.5), percentile(deliv, 1)
	if s.load == nil || s.healthy == nil || s.flap == nil {
		r.add("soak ran", false, "it stopped before the load started: %v", s.fatal)
		return r
	}
	r.Answers = s.load.answers()
	r.Sent = s.load.next.Load()
	r.Acked = s.load.acked.count()
	r.Poison = intersect(&s.load.acked, &s.load.poisoned)
	complete := s.fatal == nil && s.drain.Drained

	for _, rec := range s.records {
		r.Healthy.Dropped += rec.DroppedHealthy
		r.Flap.Dropped += rec.DroppedFlap
	}
	r.Healthy.Allowance, r.Flap.Allowance = s.allowance["healthy"], s.allowance["flap"]
	// A drop can only take events numbered before the end of the last run
	// that dropped any: those after it that are missing are lost, whatever
	// spillway counted as dropped.
	for _, rec := range s.records {
		if rec.DroppedHealthy > 0 {
			r.Healthy.DropWindow = max(r.Healthy.DropWindow, rec.sentAtEnd)
		}
		if rec.DroppedFlap > 0 {
			r.Flap.DropWindow = max(r.Flap.DropWindow, rec.sentAtEnd)
		}
	}
	fill := func(f *destFig, k *sink, dead []*bitset) float64 {
		f.Delivered = intersect(&s.load.acked, &k.delivered)
		f.Received = k.received.Load()
		f.Duplicates = f.Received - k.delivered.count()
		f.Unacked = k.delivered.count() - f.Delivered
		for _, d := range dead {
			f.DeadLetter += intersect(&s.load.acked, d)
		}
		have := append([]*bitset{&k.delivered}, dead...)
		f.Missing, f.Examples = missing(&s.load.acked, have, 0, 10)
		f.MissingAfter, _ = missing(&s.load.acked, have, f.DropWindow, 0)
		return float64(f.MissingAfter) + max(0, float64(f.Missing-f.MissingAfter)-f.Dropped-f.Allowance)
	}
	lostH := fill(&r.Healthy, s.healthy, nil)
	lostF := fill(&r.Flap, s.flap, []*bitset{&s.dlq.rejected, &s.dlq.other})
	r.Lost = uint64(lostH + lostF)

	// The checks.
	if s.fatal != nil {
		r.add("soak completed", false, "%s", firstLine([]string{s.fatal.Error()})[2:])
	}
	r.add("no spillway misbehaviour during the soak", len(s.findings) == 0, "%d finding(s)%s", len(s.findings), firstLine(s.findings))
	r.add("drain", s.drain.Drained, "backlog 0 at both destinations %.1fs after the load stopped (bound %v)", s.drain.Took.Seconds(), s.cfg.drainWithin)
	if !complete {
		r.add("acknowledged events delivered", false, "not checked: the soak did not complete its drain")
	} else {
		r.add("healthy: every acknowledged event delivered", lostH == 0,
			"%s%s", r.Healthy.lossDetail(r.Acked), examples(r.Healthy.Examples))
		r.add("flap: every acknowledged event delivered or dead-lettered", lostF == 0,
			"%s%s", r.Flap.lossDetail(r.Acked), examples(r.Flap.Examples))
	}
	if s.dlq.Err != "" {
		r.add("dead letters listed", false, "%s", s.dlq.Err)
	}
	otherN := s.dlq.other.count()
	r.add("dead letters: only the poison events, with reason rejected", otherN == 0 && s.dlq.Unknown == 0,
		"%d acknowledged poison events, %d dead-lettered as flap/rejected, %d other letters, %d without an id; by reason %v",
		r.Poison, s.dlq.rejected.count(), otherN, s.dlq.Unknown, s.dlq.ByReason)
	r.add("flap: no poison event accepted", s.flap.poisonDelivered.Load() == 0, "%d", s.flap.poisonDelivered.Load())
	unknown := s.healthy.unknown.Load() + s.flap.unknown.Load()
	r.add("sinks: every event had a chaos messageId", unknown == 0, "%d without", unknown)
	var over []string
	for _, rec := range s.records {
		if rec.PeakRSSKiB > s.cfg.rssLimitMiB<<10 {
			over = append(over, fmt.Sprintf("run %d: %s (largest sample %s: %s anonymous, %s file-backed)", rec.Run,
				mib(rec.PeakRSSKiB<<10), mib(rec.TopRSS.RSS<<10), mib(rec.TopRSS.Anon<<10), mib(rec.TopRSS.File<<10)))
		}
	}
	if s.dlq.PeakAfterKiB >= s.dlq.PeakBeforeKiB+1024 {
		over = append(over, fmt.Sprintf("listing the dead letters raised run %d's peak from %s to %s",
			s.dlq.Run, mib(s.dlq.PeakBeforeKiB<<10), mib(s.dlq.PeakAfterKiB<<10)))
	}
	r.add(fmt.Sprintf("peak RSS within %d MiB", s.cfg.rssLimitMiB), r.PeakRSSKiB <= s.cfg.rssLimitMiB<<10 && r.PeakRSSKiB > 0,
		"peak %s%s", mib(r.PeakRSSKiB<<10), listOrEmpty(over))
	if complete {
		r.add("spool back near its floor after the drain", s.floor.Reached,
			"%s on disk after %.0fs; allowed %s (fresh %s + dead letters %s + messageId index %s + 8 MiB)",
			mib(s.floor.Bytes), s.floor.Took.Seconds(), mib(s.floor.Allowed), mib(s.baseline.SpoolBytes), mib(s.dlq.Bytes), mib(s.floor.Dedupe))
		r.add("clean stop after the drain", s.floor.FinalExit == 0, "exit status %d", s.floor.FinalExit)
		s.growthChecks(r)
	}
	if s.fuse {
		if ep := s.diskEp; ep == nil {
			r.add("full disk", !complete, "no episode happened")
		} else {
			r.add("full disk: refused with 503 while full, no 500", ep.During.Unavailable > 0 && ep.During.Internal == 0 && !ep.Died,
				"answers while full: %s; unready seen %v", ep.During, ep.UnreadySeen)
			r.add("full disk: accepting again once space returned", ep.RecoveredInMs >= 0 && ep.RecoveredInMs < 10000,
				"ready and a 200 %.0f ms after the space returned (bound 10 s)", ep.RecoveredInMs)
		}
	}
	if ep := s.dropEp; ep == nil {
		r.add("drop episode", !complete || s.cfg.duration < 2*time.Minute, "none happened")
	} else {
		r.add("drop episode dropped events (drop-oldest, counted)", ep.DroppedFlap > 0,
			"run %d, bound %s: flap %.0f dropped, healthy %.0f; %d log line(s)", ep.Run, mib(ep.MaxBytes), ep.DroppedFlap, ep.DroppedHealthy, ep.LogLines)
	}
	var stray []string
	for _, rec := range s.records {
		if (s.dropEp == nil || rec.Run != s.dropEp.Run) && rec.DroppedHealthy+rec.DroppedFlap > 0 {
			stray = append(stray, fmt.Sprintf("run %d: healthy %.0f, flap %.0f", rec.Run, rec.DroppedHealthy, rec.DroppedFlap))
		}
	}
	r.add("no drops outside the drop episode", len(stray) == 0, "%d run(s)%s", len(stray), listOrEmpty(stray))
	if s.flapper != nil && len(s.flapper.errs) > 0 {
		r.add("flapping sink listened again", false, "%v", s.flapper.errs[0])
	}
	r.OK = r.failed() == 0
	return r
}

// growthChecks compares goroutines and descriptors: the fresh spool with
// the drained one (both idle, sampleAfterReady after ready), and every run
// with the load running, at the same point. Descriptors on spool files
// follow the files the spool holds, so those are held to one a file and
// to none already removed; the others (sockets, pipes, the binary) must
// not grow.
func (s *soak) growthChecks(r *result) {
	b, f := s.baseline, s.final
	r.add("goroutines: drained and restarted vs fresh, idle", f.Goroutines <= b.Goroutines+5,
		"%.0f vs %.0f (allowed +5)", f.Goroutines, b.Goroutines)
	other := func(st fdStat) int { return st.Total - st.Spool - st.Dirs }
	r.add("fds other than the spool's: drained and restarted vs fresh, idle", other(f.FDs) <= other(b.FDs)+3,
		"%d vs %d (allowed +3)", other(f.FDs), other(b.FDs))
	var deleted, twice []string
	for _, rec := range s.records {
		if rec.FDs.Deleted > 0 {
			deleted = append(deleted, fmt.Sprintf("run %d: %d", rec.Run, rec.FDs.Deleted))
		}
		if rec.FDs.Twice > 0 {
			twice = append(twice, fmt.Sprintf("run %d: %d, e.g. %s", rec.Run, rec.FDs.Twice, rec.FDs.Example))
		}
	}
	r.add("fds on spool files: none on a removed file, none held twice", len(deleted)+len(twice) == 0,
		"idle fresh %d on %d files, drained %d on %d%s%s", b.FDs.Spool, b.SpoolFiles, f.FDs.Spool, f.SpoolFiles,
		listOrEmpty(deleted), listOrEmpty(twice))
	// Under load: the runs between the first (idle) and the final restart.
	var g, d []float64
	for _, rec := range s.records[1:] {
		if rec.After == "SIGTERM" || rec.Goroutines <= 0 {
			continue
		}
		g = append(g, rec.Goroutines)
		d = append(d, float64(other(rec.FDs)))
	}
	if len(g) < 4 {
		return
	}
	half := len(g) / 2
	gFirst, gLast := minOf(g[:half]), minOf(g[len(g)-half:])
	dFirst, dLast := minOf(d[:half]), minOf(d[len(d)-half:])
	r.add("goroutines under load: no growth across restarts", gLast <= gFirst*1.2+10,
		"least of the last %d runs %.0f vs of the first %d %.0f (allowed +20%% +10)", half, gLast, half, gFirst)
	r.add("fds other than the spool's under load: no growth across restarts", dLast <= dFirst+10,
		"least of the last %d runs %.0f vs of the first %d %.0f (allowed +10)", half, dLast, half, dFirst)
}

func minOf(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs[1:] {
		m = min(m, x)
	}
	return m
}

func firstLine(fs []string) string {
	if len(fs) == 0 {
		return ""
	}
	l, _, _ := strings.Cut(fs[0], "\n")
	return ": " + l
}

func examples(ids []uint64) string {
	if len(ids) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("; e.g.")
	for _, id := range ids {
		fmt.Fprintf(&b, " %s%d", idPrefix, id)
	}
	return b.String()
}

// listOrEmpty joins up to five of xs after a colon, saying how many more
// there are.
func listOrEmpty(xs []string) string {
	const most = 5
	switch {
	case len(xs) == 0:
		return ""
	case len(xs) > most:
		return fmt.Sprintf(": %s; and %d more (see --json)", strings.Join(xs[:most], "; "), len(xs)-most)
	}
	return ": " + strings.Join(xs, "; ")
}

// print writes the summary table, the runs, and the checks.
func (r *result) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "\nchaos soak, seed %d\n", r.Seed)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "  %s\t%s\n", k, fmt.Sprintf(format, args...)) }
	fs := "power-cut filesystem"
	if r.StrictDirs {
		fs += " with POSIX-strict directories"
	}
	if !r.FUSE {
		fs = "plain directory: NO POWER CUTS, NO FULL DISK"
	}
	row("duration", "%.0fs of load and crashes, %.0fs in all; spool on a %s", r.DurationS, r.TotalS, fs)
	row("load", "%.0f events/s (half of %.0f measured closed-loop); requests %s", r.Rate, r.MaxRate, r.Answers)
	row("runs", "%d spillway processes", r.Runs)
	row("kill -9s", "%d", r.Kills)
	row("power cuts", "%d (clean %d, harsh %d)", r.CutsClean+r.CutsHarsh, r.CutsClean, r.CutsHarsh)
	if r.Died > 0 {
		row("died by itself", "%d", r.Died)
	}
	row("acknowledged", "%d events (%d sent; %d poison)", r.Acked, r.Sent, r.Poison)
	row("delivered", "healthy %d, flapping %d (acknowledged, each once)", r.Healthy.Delivered, r.Flap.Delivered)
	row("dead-lettered", "%d letters %v; %d acknowledged events for flap", r.DeadLetters, r.DLQByReason, r.Flap.DeadLetter)
	row("dropped", "healthy %.0f, flapping %.0f (counted by spillway); allowance %.0f, %.0f", r.Healthy.Dropped, r.Flap.Dropped, r.Healthy.Allowance, r.Flap.Allowance)
	row("missing", "healthy %d, flapping %d; lost (beyond counted drops) %d", r.Healthy.Missing, r.Flap.Missing, r.Lost)
	row("duplicates", "healthy %d, flapping %d (at-least-once)", r.Healthy.Duplicates, r.Flap.Duplicates)
	row("recovery to ready", "p50 %.0f ms, max %.0f ms%s", r.ReadyP50Ms, r.ReadyMaxMs, r.backlogOf(r.ReadyMaxMs, func(rec *runRecord) float64 { return rec.ToReadyMs }))
	row("recovery to 1st delivery", "p50 %.0f ms, max %.0f ms%s (healthy sink)", r.DelivP50Ms, r.DelivMaxMs, r.backlogOf(r.DelivMaxMs, func(rec *runRecord) float64 { return rec.ToDeliverMs }))
	var bh, bf, uh, uf []float64
	for _, rec := range r.RunsDetail {
		switch rec.End {
		case endKill, endClean, endHarsh, endDied:
			bh, bf = append(bh, rec.EndBacklogH), append(bf, rec.EndBacklogF)
			uh, uf = append(uh, float64(rec.UndeliveredH)), append(uf, float64(rec.UndeliveredF))
		}
	}
	if len(bh) > 0 {
		row("backlog at the cuts", "gauge: healthy p50 %.0f, max %.0f; flapping p50 %.0f, max %.0f", percentile(bh, 0.5), percentile(bh, 1), percentile(bf, 0.5), percentile(bf, 1))
		row("", "acknowledged, not yet at the sink: healthy p50 %.0f, max %.0f; flapping p50 %.0f, max %.0f", percentile(uh, 0.5), percentile(uh, 1), percentile(uf, 0.5), percentile(uf, 1))
	}
	row("peak RSS", "%s", mib(r.PeakRSSKiB<<10))
	row("spool after drain", "%s vs floor %s (fresh) + %s dead letters", mib(r.Floor.Bytes), mib(r.Baseline.SpoolBytes), mib(r.DLQBytes))
	row("idle fresh vs final", "goroutines %.0f vs %.0f, fds %d vs %d (on spool files %d vs %d)",
		r.Baseline.Goroutines, r.Final.Goroutines, r.Baseline.FDs.Total, r.Final.FDs.Total, r.Baseline.FDs.Spool, r.Final.FDs.Spool)
	if ep := r.DiskEp; ep != nil {
		row("full disk", "run %d, %.0fs at %s: %s; back in %.0f ms", ep.Run, ep.ForS, mib(ep.Capacity), ep.During, ep.RecoveredInMs)
	}
	if ep := r.DropEp; ep != nil {
		row("drop episode", "run %d, bound %s: dropped flap %.0f, healthy %.0f", ep.Run, mib(ep.MaxBytes), ep.DroppedFlap, ep.DroppedHealthy)
	}
	tw.Flush()

	fmt.Fprintln(w, "\n  per run: the start (after what, exec to ready, to the first delivery at the healthy sink), the fixed point 3 s after ready")
	fmt.Fprintln(w, "  (goroutines, fds with those on spool files, generations), and the end (backlog per spillway's gauge, and acknowledged")
	fmt.Fprintln(w, "  events not yet at each sink per the soak's own count; the next run recovers them):")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "  run\twhen-full\tafter\tready ms\t1st deliv ms\tgorout.\tfds (spool)\tgens\tpeak RSS\tlength s\tend\tgauge h/f\tundeliv. h/f\tdropped f\t")
	for _, rec := range r.RunsDetail {
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%.0f\t%.0f\t%.0f\t%d (%d)\t%d\t%s\t%.1f\t%s\t%.0f/%.0f\t%d/%d\t%.0f\t\n",
			rec.Run, rec.WhenFull, rec.After, rec.ToReadyMs, rec.ToDeliverMs,
			rec.Goroutines, rec.FDs.Total, rec.FDs.Spool, rec.Generations, mib(rec.PeakRSSKiB<<10), rec.LenS, rec.End,
			rec.EndBacklogH, rec.EndBacklogF, rec.UndeliveredH, rec.UndeliveredF, rec.DroppedFlap)
	}
	tw.Flush()

	fmt.Fprintln(w, "\n  checks:")
	for _, c := range r.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "  %s %s: %s\n", mark, c.Name, c.Detail)
	}
	for _, f := range r.Findings {
		fmt.Fprintf(w, "\n  finding: %s\n", f)
	}
	fmt.Fprintln(w)
}

// backlogOf names the backlog the run that took v (by get) recovered.
func (r *result) backlogOf(v float64, get func(*runRecord) float64) string {
	for i, rec := range r.RunsDetail {
		if i > 0 && rec.After != "SIGTERM" && get(rec) == v {
			return fmt.Sprintf(" (run %d, after %s, backlog %.0f/%.0f)", rec.Run, rec.After, rec.BacklogHealthy, rec.BacklogFlap)
		}
	}
	return ""
}

func (f *destFig) lossDetail(acked uint64) string {
	d := fmt.Sprintf("%d of %d acknowledged missing", f.Missing, acked)
	if f.Dropped > 0 || f.Allowance > 0 {
		d += fmt.Sprintf(", %d of them sent after the last run that dropped (chaos-%d on); %.0f counted as dropped, %.0f allowed",
			f.MissingAfter, f.DropWindow, f.Dropped, f.Allowance)
	}
	return d
}
