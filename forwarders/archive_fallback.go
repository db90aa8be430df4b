package forwarders

import (
	"context"
	"errors"
	"fmt"
	"io"
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

// handOffObjectBytes bounds the events of one hand-off object: an object
// stored is a part of the hand-off kept if the time runs out after it.
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
// to a in objects of at most handOffObjectBytes of events, under
// PREFIX/undelivered/NAME/, each decided as the archive's own objects are:
// its range recorded in the spool (the destination's pending range, which
// a destination of another kind does not use) before its upload, marked
// confirmed once stored, then acknowledged. A hand-off that a crash cut
// short is repeated at the next shutdown from the saved cursor, which may
// be behind: it cuts an unconfirmed range again with the same bounds,
// overwriting its object with the same bytes, and skips a confirmed one,
// so each event is in one hand-off object. It returns how many events
// were handed off.
func (d *Dispatcher) handOffTo(ctx context.Context, a *archiveForwarder) (int, error) {
	sp, ok := d.sp.(rangeStore)
	if !ok {
		return 0, errors.New("the spool cannot record object ranges")
	}
	name := d.dest.Name
	if err := sp.Rewind(name); err != nil {
		return 0, err
	}
	h := handOff{d: d, a: a, sp: sp, under: path.Join(undeliveredDir, name)}
	p, ok, err := sp.PendingRange(name)
	if err != nil {
		return 0, err
	}
	h.from, h.redo = resumeAt(p, ok)
	scratch := &fileSink{open: sp.ScratchFile}
	defer scratch.close()
	h.obj.sink = scratch
	limit := min(a.dest.BatchBytes, handOffObjectBytes)
	var (
		recs  []spool.Record
		arena []byte
	)
	for {
		recs, arena, err = sp.ReadInto(name, recs[:0], arena[:0], 1<<16, archiveRead)
		if err != nil {
			return h.handed, err
		}
		if len(recs) == 0 {
			if err := h.put(ctx); err != nil {
				return h.handed, err
			}
			return h.handed, sp.Ack(name, sp.Position(name))
		}
		for _, r := range recs {
			if h.redo != nil && r.Seq > h.redo.Last || h.redo == nil && h.obj.raw >= limit {
				if err := h.put(ctx); err != nil {
					return h.handed, err
				}
			}
			if r.Seq < h.from || !d.route.wants(r.Data) {
				continue
			}
			if err := h.obj.add(r); err != nil {
				return h.handed, err
			}
		}
	}
}

// handOff is the state of one destination's handOffTo.
type handOff struct {
	d     *Dispatcher
	a     *archiveForwarder
	sp    rangeStore
	under string
	// from is the first event not in a confirmed hand-off object.
	from uint64
	// redo is an unconfirmed range an interrupted hand-off left.
	redo   *spool.Pending
	obj    objectBuilder
	handed int
}

// put writes the object built so far, if any, as handOffTo says.
func (h *handOff) put(ctx context.Context) error {
	o, name := &h.obj, h.d.dest.Name
	if o.events == 0 {
		if h.redo != nil {
			// None of its events is left (dropped while the spool was full).
			h.from, h.redo = h.redo.Last+1, nil
		}
		return nil
	}
	body, size, err := o.finish()
	if err != nil {
		return err
	}
	p := spool.Pending{First: o.first, Last: o.last}
	if h.redo == nil {
		if err := h.sp.SetPending(name, p); err != nil {
			return err
		}
	}
	if err := putRetrying(ctx, h.a, o.key(h.a.dest.Archive.Prefix, h.under), body, size, h.d.dest.BackoffMin); err != nil {
		return err
	}
	p.Confirmed = true
	if err := h.sp.SetPending(name, p); err != nil {
		return err
	}
	h.from, h.redo = p.Last+1, nil
	h.handed += o.events
	o.reset()
	return h.sp.Ack(name, p.Last+1)
}

// putRetrying uploads one object, retrying failures until ctx ends.
func putRetrying(ctx context.Context, a *archiveForwarder, key string, body io.ReaderAt, size int64, wait time.Duration) error {
	for fails := 1; ; fails++ {
		err := a.store.put(ctx, key, body, size)
		if err == nil || ctx.Err() != nil {
			return err
		}
		if !sleep(ctx, jitter(wait, 10*wait, fails, 0)) {
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		}
	}
}
