package main

import (
	"fmt"
	"io"
	"os/exec"
	"sort"
	"strings"
)

func rate(v float64) string {
	switch {
	case v <= 0:
		return "-"
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.1fk", v/1e3)
	case v >= 1e3:
		return fmt.Sprintf("%.2fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

func count(v int64) string {
	if v < 0 {
		return "0" // duplicates (at-least-once) can overtake the accepted count
	}
	return rate(float64(v))
}

func commit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown commit"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
		c += "+dirty"
	}
	return c
}

func (r *runner) printTable(w io.Writer) {
	if len(r.rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\nspillway bench: %s, commit %s\n", header(r.cfg), commit())
	table := [][]string{{"workload", "", "ceiling ev/s", "spillway ev/s", "ratio", "p50 ms", "p99 ms", "null p99",
		"delivered ev/s", "backlog", "peak RSS MiB", "spool B/ev", "raw B/ev"}}
	for _, rw := range r.rows {
		if rw.Idle != nil {
			continue // a table of its own
		}
		c, s := rw.Ceiling, rw.Spillway
		cells := []string{rw.Name, rw.Desc, "-", "-", "-", "-", "-", "-", rate(rw.DeliveredPerS), "-", "-", "-", "-"}
		if c != nil {
			cells[2] = rate(c.EventsPerS)
			cells[7] = fmt.Sprintf("%.2f", c.P99ms)
		}
		if s != nil {
			cells[3] = rate(s.EventsPerS)
			cells[5] = fmt.Sprintf("%.2f", s.P50ms)
			cells[6] = fmt.Sprintf("%.2f", s.P99ms)
			cells[9] = count(rw.BacklogAtEnd)
			cells[12] = fmt.Sprintf("%.0f", s.EventBytesAvg)
			if c != nil && c.EventsPerS > 0 {
				cells[4] = fmt.Sprintf("%.3f", s.EventsPerS/c.EventsPerS)
			}
		}
		if rw.PeakRSSKiB > 0 {
			cells[10] = fmt.Sprintf("%.1f", float64(rw.PeakRSSKiB)/1024)
		}
		if rw.SpoolEvents > 0 {
			cells[11] = fmt.Sprintf("%.0f", float64(rw.SpoolAllocBytes)/float64(rw.SpoolEvents))
		}
		table = append(table, cells)
	}
	if len(table) > 1 {
		printAligned(w, table, 2)
	}

	var notes []string
	for _, rw := range r.rows {
		c, s := rw.Ceiling, rw.Spillway
		if rw.Name == "W2" && s != nil && c != nil && c.ReqPerS > 0 {
			notes = append(notes, fmt.Sprintf("W2: %s req/s vs %s req/s at the null server (%.3f)", rate(s.ReqPerS), rate(c.ReqPerS), s.ReqPerS/c.ReqPerS))
		}
		if rw.Name == "W4" {
			var load float64
			if s != nil {
				load = s.EventsPerS
			}
			notes = append(notes, fmt.Sprintf("W4: backlog %s events when the sink came back (spool %.1f MiB on disk); first delivery %.1f s later; caught up with the live load in %.1f s, delivering %s ev/s while taking %s ev/s (backlog/time: %s ev/s)",
				rate(float64(rw.BacklogAtUp)), float64(rw.SpoolAllocBytes)/(1<<20), rw.FirstDeliveryS, rw.DrainS,
				rate(rw.DeliveredPerS), rate(load), rate(float64(rw.BacklogAtUp)/rw.DrainS)))
		}
		for _, n := range rw.Notes {
			notes = append(notes, rw.Name+": "+n)
		}
		for i, lr := range []*loadResult{c, s} {
			who := []string{"null", "spillway"}[i]
			if lr == nil || len(lr.Statuses)+len(lr.Errors) == 0 {
				continue
			}
			notes = append(notes, fmt.Sprintf("%s %s: non-200 %s, errors %s (of %d requests)", rw.Name, who, kv(lr.Statuses), kv(lr.Errors), lr.Requests))
		}
	}
	for _, n := range notes {
		fmt.Fprintln(w, "  "+n)
	}
	r.printTargets(w)
	for _, rw := range r.rows {
		if rw.Idle != nil {
			printIdle(w, rw.Idle)
		}
	}
}

// printAligned prints rows in columns: the first `left` columns aligned
// left, the numbers right.
func printAligned(w io.Writer, rows [][]string, left int) {
	width := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], len(c))
		}
	}
	for _, r := range rows {
		var b strings.Builder
		for i, c := range r {
			pad := strings.Repeat(" ", width[i]-len(c))
			if i < left {
				b.WriteString(c + pad + "  ")
			} else {
				b.WriteString("  " + pad + c)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
}

func kv(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s x%d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// printTargets checks the measured rows against issue #5's targets.
func (r *runner) printTargets(w io.Writer) {
	get := func(name string) *row {
		for _, rw := range r.rows {
			if rw.Name == name && rw.Spillway != nil {
				return rw
			}
		}
		return nil
	}
	var lines []string
	check := func(ok bool, format string, a ...any) {
		mark := "ok  "
		if !ok {
			mark = "MISS"
		}
		lines = append(lines, mark+" "+fmt.Sprintf(format, a...))
	}
	w1, w2, w3, r50, w4 := get("W1"), get("W2"), get("W3"), get("R50"), get("W4")
	if w1 != nil && w1.Ceiling != nil {
		x := w1.Spillway.EventsPerS / w1.Ceiling.EventsPerS
		check(x >= 0.08, "W1 accepted/ceiling %.3f >= 0.08", x)
		check(w1.DeliveredPerS >= 0.95*w1.Spillway.EventsPerS, "W1 delivery keeps up: %s delivered vs %s accepted ev/s", rate(w1.DeliveredPerS), rate(w1.Spillway.EventsPerS))
	}
	if w2 != nil && w2.Ceiling != nil {
		x := w2.Spillway.ReqPerS / w2.Ceiling.ReqPerS
		check(x >= 0.5, "W2 accepted/ceiling %.3f >= 0.5 (requests/s)", x)
	}
	if r50 != nil {
		check(r50.Spillway.P99ms <= 10, "R50 p99 %.2f ms <= 10 ms", r50.Spillway.P99ms)
	}
	if w3 != nil && w1 != nil && w1.DeliveredPerS > 0 {
		x := w3.DeliveredPerS / w1.DeliveredPerS
		check(x >= 0.9, "W3 healthy delivered / W1 delivered %.2f >= 0.9", x)
	}
	for _, rw := range []*row{w1, w4} {
		if rw != nil && rw.PeakRSSKiB > 0 {
			check(rw.PeakRSSKiB <= 64<<10, "%s peak RSS %.1f MiB <= 64 MiB", rw.Name, float64(rw.PeakRSSKiB)/1024)
		}
	}
	// Spool size per event is only meaningful where the spool still holds
	// every event: W4 at the moment the sink came back, and W3 (the 503
	// destination never acknowledges).
	for _, rw := range []*row{w4, w3} {
		if rw != nil && rw.SpoolEvents > 0 && rw.Spillway.EventBytesAvg > 0 {
			x := float64(rw.SpoolAllocBytes) / float64(rw.SpoolEvents) / rw.Spillway.EventBytesAvg
			check(x <= 0.2, "%s spool bytes on disk / raw bytes %.3f <= 0.2", rw.Name, x)
			break
		}
	}
	if len(lines) > 0 {
		fmt.Fprintln(w, "targets (issue #5):")
		for _, l := range lines {
			fmt.Fprintln(w, "  "+l)
		}
	}
}
