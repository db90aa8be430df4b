package forwarders

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"time"

	"github.com/spillwayhq/spillway/spool"
)

// handOffShare is the part of the shutdown time kept for the fallback
// hand-off when a destination has one: the drain gets the rest. Writing
// what is left to an archive is a few uploads, and a drain that has not
// finished in four fifths of its time is not likely to in the last fifth.
const handOffShare = 5

// handOffObjectBytes bounds the events of one hand-off object, all held
// in memory while it is read and compressed.
const handOffObjectBytes = 4 << 20

// drainShare returns the context the drain waits under: ctx itself, or,
// when a destination names a fallback and ctx has a deadline, one that
// ends a fifth of the remaining time earlier, so that the hand-off has
// that fifth after it.
func (g *Group) drainShare(ctx context.Context) (context.Context, context.CancelFunc) {
	deadline, ok := ctx.Deadline()
	if !ok || !slices.ContainsFunc(g.ds, func(d *Dispatcher) bool { return d.dest.Fallback != "" }) {
		return context.WithCancel(ctx)
	}
	return context.WithDeadline(ctx, deadline.Add(-time.Until(deadline)/handOffShare))
}

// handOff writes what each undrained destination with a fallback still
// has in the spool to its archive, under PREFIX/undelivered/DESTINATION/,
// and acknowledges it there. It runs once the delivery loops have
// stopped, so that the spool's read positions are its own. It returns the
// destinations it emptied; a destination whose archive fails too keeps
// its events in the spool, as without a fallback.
func (g *Group) handOff(ctx context.Context, undrained []string) (emptied []string, err error) {
	var errs []error
	for _, d := range g.ds {
		if d.dest.Fallback == "" || !slices.Contains(undrained, d.dest.Name) {
			continue
		}
		a := g.archive(d.dest.Fallback)
		if a == nil {
			continue // ParseDestinations refuses it; a destination built by hand may not
		}
		n, err := d.handOffTo(ctx, a)
		if err != nil {
			d.log.Error("fallback hand-off failed; the events stay in the spool", "fallback", d.dest.Fallback,
				"handed_off", n, keyError, err)
			errs = append(errs, fmt.Errorf("hand %s off to %s: %w", d.dest.Name, d.dest.Fallback, err))
			continue
		}
		d.log.Warn("undelivered events handed to the fallback archive; send them with spillway replay --undelivered",
			"fallback", d.dest.Fallback, keyEvents, n)
		emptied = append(emptied, d.dest.Name)
	}
	return emptied, errors.Join(errs...)
}

func (g *Group) archive(name string) *archiveForwarder {
	for _, d := range g.ds {
		if a, ok := d.fwd.(*archiveForwarder); ok && d.dest.Name == name {
			return a
		}
	}
	return nil
}

// handOffTo reads the destination's backlog from its cursor and writes it
// to a in objects of at most the archive's batch_bytes, each acknowledged
// once stored. It returns how many events were handed off.
func (d *Dispatcher) handOffTo(ctx context.Context, a *archiveForwarder) (int, error) {
	name := d.dest.Name
	if err := d.sp.Rewind(name); err != nil {
		return 0, err
	}
	under := path.Join(undeliveredDir, name)
	var recs, batch []spool.Record
	var arena []byte
	handed := 0
	for {
		var err error
		recs, arena, err = d.sp.ReadInto(name, recs[:0], arena[:0], 1<<16, min(a.dest.BatchBytes, handOffObjectBytes))
		if err != nil {
			return handed, err
		}
		if len(recs) == 0 {
			return handed, d.sp.Ack(name, d.sp.Position(name))
		}
		batch = batch[:0]
		for _, r := range recs {
			if d.route.wants(r.Data) {
				batch = append(batch, r)
			}
		}
		if err := putRetrying(ctx, a, under, batch, d.dest.BackoffMin); err != nil {
			return handed, err
		}
		handed += len(batch)
		if err := d.sp.Ack(name, recs[len(recs)-1].Seq+1); err != nil {
			return handed, err
		}
	}
}

// putRetrying writes recs as one object, retrying failures until ctx ends.
func putRetrying(ctx context.Context, a *archiveForwarder, under string, recs []spool.Record, wait time.Duration) error {
	for fails := 1; ; fails++ {
		err := a.putRecords(ctx, under, recs)
		if err == nil || ctx.Err() != nil {
			return err
		}
		if !sleep(ctx, jitter(wait, 10*wait, fails, 0)) {
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		}
	}
}
