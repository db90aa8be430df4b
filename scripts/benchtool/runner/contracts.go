package main

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
)

// plan50 is a tracking plan of 50 track events, loadgen's twelve among
// them: six of those rules are kept by every event loadgen sends and six
// are broken by every one (a required property it lacks, an integer
// price, a currency or quantity out of range, ...), so half the events
// violate the plan. Rules use types, required, enum, pattern and bounds,
// as exported plans do.
//
//go:embed plan50.json
var plan50 []byte

// contracts runs the data-contract workloads of issue #21 that are
// selected: W1 with plan50 in flag and block mode (W1flag, W1block) and
// with five privacy paths dropped or hashed (W1privacy), each against W1's
// ceiling and rate from the same run.
func (r *runner) contracts(ctx context.Context, w1 *row, spec loadSpec, sinkDest string) error {
	planFile := filepath.Join(r.work, "plan50.json")
	keyFile := filepath.Join(r.work, "hash.key")
	if err := os.WriteFile(planFile, plan50, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(keyFile, []byte("bench-hash-key\n"), 0o600); err != nil {
		return err
	}
	for _, w := range []struct {
		name, desc string
		args       []string
	}{
		{"W1flag", "W1, 50-event plan, flag", []string{"--tracking-plan", planFile, "--tracking-plan-mode", "flag"}},
		{"W1block", "W1, 50-event plan, block", []string{"--tracking-plan", planFile, "--tracking-plan-mode", "block"}},
		{"W1privacy", "W1, 5 drop/hash paths", []string{"--drop-field", "context.ip,context.userAgent,properties.coupon",
			"--hash-field", "userId,anonymousId", "--hash-key-file", keyFile}},
	} {
		if !r.selected(w.name) {
			continue
		}
		s := spec
		s.spillwayArgs = w.args
		var ceiling *loadResult
		if w1 != nil {
			ceiling = w1.Ceiling
		}
		rw, err := r.closedLoop(ctx, w.name, w.desc, s, ceiling, []string{sinkDest})
		if err != nil {
			return err
		}
		if w1 != nil && w1.Spillway != nil && w1.Spillway.EventsPerS > 0 {
			rw.Notes = append(rw.Notes, fmt.Sprintf("accepted %.3f x W1's events/s (target 0.85)", rw.Spillway.EventsPerS/w1.Spillway.EventsPerS))
		}
	}
	return nil
}
