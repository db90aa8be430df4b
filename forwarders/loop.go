package forwarders

import (
	"context"
	"fmt"
	"time"

	"github.com/spillwayhq/spillway/spool"
)

// loop is the state of a Dispatcher's run: the batch being built, the
// batches in flight and their order of acknowledgement. Only run's
// goroutine touches it; the batches in flight report back on results.
type loop struct {
	d   *Dispatcher
	ctx context.Context

	cur     building
	carry   []spool.Record  // read but not yet in a batch; their data is in cur.mem
	readBuf []spool.Record  // what carry is read into
	free    []*batchMem     // memory of finished batches
	idle    bool            // the last read found nothing
	changed <-chan struct{} // closed by the spool's first commit after the last read
	reads   spoolRetry

	slots   []*slot // launched batches, oldest first
	running int
	results chan result
	acked   uint64 // up to where the spool took the last acknowledgement
	toAck   uint64 // up to where the next may go
	acks    spoolRetry

	draining bool
	drain    <-chan struct{} // nil once draining
	timer    *time.Timer
	// idleSince is when the loop caught up while holding the memory of
	// finished batches; zero otherwise (see idleMemoryAfter).
	idleSince time.Time
}

// idleMemoryAfter is how long a caught-up loop keeps the memory of the
// batches it has sent (a batch_bytes arena each, and the request bodies)
// for the next ones. The spool hands the heap back to the system 5 s after
// the last acknowledgement: what is let go before then goes back with it,
// and an idle sidecar is charged for its RSS.
const idleMemoryAfter = 2 * time.Second

// slot is a launched batch's place in the acknowledgement order.
type slot struct {
	upTo uint64 // one past the last Seq the batch covers
	done bool
}

type result struct {
	slot *slot
	ok   bool
	mem  *batchMem
}

// batchMem is one batch's memory: its records, and their data copied
// straight into it from the spool. It is reused once the batch is done, so
// delivering allocates nothing per event; batches holding on to decoded
// spool blocks were most of what delivery allocated.
type batchMem struct {
	recs  []spool.Record
	arena []byte
	// private holds the events rewritten by the destination's privacy
	// rules, which records then point to instead of the arena.
	private []byte
}

// batchOverhead is counted in every batch's bytes besides its events (one
// separator byte each), so that no request body, in any format, outgrows
// batch_bytes: Segment's {"batch":[...],"sentAt":"..."} takes 45 bytes.
const batchOverhead = 64

// building is the batch being filled.
type building struct {
	mem   *batchMem // nil until the first read into it
	recs  []spool.Record
	bytes int // batchOverhead plus each event and its separator, once it has one
	upTo  uint64
	first time.Time // when its first record came: the flush clock
	full  bool
}

// run is the read loop: it fills a batch, launches it when it is due,
// acknowledges the batches that finished, and waits for something to do.
func (d *Dispatcher) run(ctx context.Context) {
	l := &loop{
		d:       d,
		ctx:     ctx,
		results: make(chan result, d.dest.Concurrency),
		reads:   spoolRetry{op: "read from spool", errPrefix: "read spool"},
		acks:    spoolRetry{op: "acknowledge to spool", errPrefix: "ack spool"},
		drain:   d.drain,
		timer:   time.NewTimer(time.Hour),
	}
	l.timer.Stop()
	defer func() { d.logDeadLetters(time.Now(), true) }()
	for {
		l.fill()
		now := time.Now()
		if l.launch(now) {
			continue
		}
		l.acknowledge(now)
		if l.draining && l.caughtUp() && l.acks.fails == 0 {
			d.caughtUpDraining()
		}
		if !l.wait(now) {
			l.stop()
			return
		}
	}
}

// fill reads into the batch being built until it is full, the spool has
// nothing more for now, or reading fails.
func (l *loop) fill() {
	for l.ctx.Err() == nil && !l.cur.full && l.reads.due(time.Now()) {
		more := true
		if len(l.carry) == 0 {
			more = l.read()
		}
		l.carry = l.take(l.carry)
		if !more {
			return
		}
	}
}

// read reads what fits in the batch being built into carry, and reports
// whether there may be more to read at once.
func (l *loop) read() bool {
	d := l.d
	l.changed = d.sp.Changed() // before Read, so no commit slips between
	if l.cur.mem == nil {
		l.newBatchMem()
	}
	budget := d.dest.BatchBytes - max(l.cur.bytes, batchOverhead)
	recs, arena, err := d.sp.ReadInto(d.dest.Name, l.readBuf[:0], l.cur.mem.arena,
		d.dest.BatchEvents-len(l.cur.recs), max(budget, 1))
	l.cur.mem.arena, l.readBuf, l.carry = arena, recs, recs
	l.idle = len(recs) == 0
	if err != nil {
		l.reads.failed(d, err)
		return false
	}
	l.reads.succeeded(d)
	return !l.idle
}

// take moves records from carry into the batch being built, until it is
// full, and returns what is left.
func (l *loop) take(carry []spool.Record) []spool.Record {
	cur, dest := &l.cur, &l.d.dest
	for i := range carry {
		r := &carry[i]
		if !l.d.route.wants(r.Data) {
			l.skip(r.Seq)
			continue
		}
		if l.d.privacy != nil {
			l.applyPrivacy(r)
		}
		size := len(r.Data) + 1
		if len(cur.recs) > 0 && (len(cur.recs) >= dest.BatchEvents || cur.bytes+size > dest.BatchBytes) {
			cur.full = true
			return carry[i:]
		}
		if len(cur.recs) == 0 {
			cur.first = time.Now()
			cur.bytes = batchOverhead
		}
		cur.recs = append(cur.recs, *r)
		cur.bytes += size
		cur.upTo = r.Seq + 1
	}
	if len(cur.recs) >= dest.BatchEvents || cur.bytes >= dest.BatchBytes {
		cur.full = true
	}
	return nil
}

// applyPrivacy points r at its event rewritten by the destination's
// privacy rules, in the batch's memory.
func (l *loop) applyPrivacy(r *spool.Record) {
	m := l.cur.mem
	from := len(m.private)
	out, err := l.d.privacy.Apply(m.private, r.Data)
	if err != nil {
		// The proxy stores only JSON, so this is a bug; the event goes
		// as it is rather than vanish, and the log says so.
		l.d.log.Error("apply privacy rules; sending the event as it is", keyError, err)
		return
	}
	// Records taken before point into the old array if this one grew:
	// it stays theirs.
	m.private = out
	r.Data = out[from:len(out):len(out)]
}

// skip passes over a record the destination does not want: it is done at
// once, riding with the batch being built or, when there is none, in a
// finished slot of its own.
func (l *loop) skip(seq uint64) {
	switch n := len(l.slots); {
	case len(l.cur.recs) > 0:
		l.cur.upTo = seq + 1
	case n > 0 && l.slots[n-1].done:
		l.slots[n-1].upTo = seq + 1
	default:
		l.slots = append(l.slots, &slot{upTo: seq + 1, done: true})
	}
}

// launch starts delivering the batch being built if it is due and there
// is room, and reports whether it did.
func (l *loop) launch(now time.Time) bool {
	if !l.due(now) || !l.room() || l.ctx.Err() != nil {
		return false
	}
	s := &slot{upTo: l.cur.upTo}
	l.slots = append(l.slots, s)
	l.running++
	d, ctx, results := l.d, l.ctx, l.results
	recs, mem := l.cur.recs, l.cur.mem
	mem.recs = recs // keep what append grew
	d.spawn(func() { results <- result{slot: s, ok: d.process(ctx, recs), mem: mem} })
	l.cur = building{}
	if len(l.carry) > 0 {
		// Records read past the full batch live in its memory.
		l.newBatchMem()
		l.cur.mem.arena = moveData(l.cur.mem.arena, l.carry)
	}
	return true
}

// due says whether the batch being built should go: it is full, its flush
// time has come, or the destination is draining.
func (l *loop) due(now time.Time) bool {
	return len(l.cur.recs) > 0 && (l.cur.full || l.draining || !now.Before(l.flushAt()))
}

func (l *loop) flushAt() time.Time { return l.cur.first.Add(l.d.dest.Flush) }

// room says whether another batch may go: one at a time until the
// destination has shown it is up (see gate.open), then up to concurrency.
func (l *loop) room() bool {
	return l.running < l.d.dest.Concurrency && (l.running == 0 || l.d.gate.open())
}

// acknowledge acknowledges the contiguous prefix of finished batches.
func (l *loop) acknowledge(now time.Time) {
	n := 0
	for n < len(l.slots) && l.slots[n].done {
		l.toAck = l.slots[n].upTo
		n++
	}
	l.slots = l.slots[n:]
	if l.caughtUp() {
		// Up to the read position, past the events the spool skipped as
		// meant for another destination.
		l.toAck = max(l.toAck, l.d.sp.Position(l.d.dest.Name))
	}
	if l.toAck <= l.acked || !l.acks.due(now) {
		return
	}
	if err := l.d.sp.Ack(l.d.dest.Name, l.toAck); err != nil {
		l.acks.failed(l.d, err)
		return
	}
	l.acks.succeeded(l.d)
	l.acked = l.toAck
	if l.d.lanes != nil {
		l.d.lanes.ackedTo(l.acked)
	}
}

// caughtUp says whether everything read is done: the last read found
// nothing new, and no batch is being built, in flight or waiting for an
// earlier one to be acknowledged.
func (l *loop) caughtUp() bool {
	return l.idle && l.reads.fails == 0 && l.running == 0 && len(l.slots) == 0 &&
		len(l.cur.recs) == 0 && len(l.carry) == 0
}

// wait waits for something to do: a batch finishing, new events, a flush
// or retry time, dead letters to log, or the drain. false when ctx ended.
func (l *loop) wait(now time.Time) bool {
	// Logs the dead letters that are due, and says when the others are.
	deadline := l.d.logDeadLetters(now, false)
	if release := l.idleMemoryAt(now); !release.IsZero() {
		deadline = earliest(deadline, release)
	}
	if len(l.cur.recs) > 0 && !l.due(now) {
		deadline = earliest(deadline, l.flushAt())
	}
	if l.reads.fails > 0 && !l.cur.full {
		deadline = earliest(deadline, l.reads.at)
	}
	if l.acks.fails > 0 && l.toAck > l.acked {
		deadline = earliest(deadline, l.acks.at)
	}
	var timer <-chan time.Time
	if !deadline.IsZero() {
		l.timer.Reset(time.Until(deadline))
		timer = l.timer.C
		defer l.timer.Stop()
	}
	var changed <-chan struct{}
	if l.idle && l.reads.fails == 0 && !l.cur.full {
		changed = l.changed
	}
	select {
	case <-l.ctx.Done():
		return false
	case r := <-l.results:
		l.running--
		r.slot.done = r.ok
		// process has returned: nothing reads the batch's records now.
		l.putMem(r.mem)
	case <-changed:
	case <-timer:
	case <-l.d.dlHeld:
	case <-l.drain:
		l.draining, l.drain = true, nil
	}
	return true
}

// idleMemoryAt lets go of the finished batches' memory once the loop has
// been caught up for idleMemoryAfter, and otherwise returns when it will,
// or zero.
func (l *loop) idleMemoryAt(now time.Time) time.Time {
	if !l.caughtUp() || len(l.free) == 0 {
		l.idleSince = time.Time{}
		return time.Time{}
	}
	if l.idleSince.IsZero() {
		l.idleSince = now
	}
	if at := l.idleSince.Add(idleMemoryAfter); now.Before(at) {
		return at
	}
	l.free, l.idleSince = nil, time.Time{}
	if len(l.cur.recs) == 0 {
		// Not nil, which the next read would make whole again at once:
		// empty, grown by the reads that fill it.
		l.cur.mem = &batchMem{}
	}
	// The last read's records point into a batch's memory.
	clear(l.readBuf[:cap(l.readBuf)])
	dropRequestBodies()
	return time.Time{}
}

// earliest is the earlier of two times, zero standing for none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// stop waits for the batches in flight, cancelled with ctx, and
// acknowledges what finished; batches cancelled midway stay
// unacknowledged and are sent again after a restart.
func (l *loop) stop() {
	for ; l.running > 0; l.running-- {
		r := <-l.results
		r.slot.done = r.ok
	}
	for _, s := range l.slots {
		if !s.done {
			break
		}
		l.toAck = s.upTo
	}
	if l.toAck > l.acked {
		if err := l.d.sp.Ack(l.d.dest.Name, l.toAck); err != nil {
			l.d.log.Error("acknowledge to spool failed at shutdown; those events will be sent again", keyError, err)
		}
	}
}

// spoolRetry paces the retries of a spool operation that fails, and logs
// when it starts failing and when it works again, not each try.
type spoolRetry struct {
	op        string // what failed, for the log
	errPrefix string // for the destination's last error
	fails     int    // in a row
	at        time.Time
}

// due says whether the operation may be tried now.
func (r *spoolRetry) due(now time.Time) bool {
	return r.fails == 0 || !now.Before(r.at)
}

func (r *spoolRetry) failed(d *Dispatcher, err error) {
	r.fails++
	r.at = time.Now().Add(jitter(d.dest.BackoffMin, d.dest.BackoffMax, r.fails, 0))
	if r.fails == 1 {
		d.log.Error(r.op+" failed", keyError, err)
	}
	d.setLastErr(fmt.Errorf("%s: %w", r.errPrefix, err))
}

func (r *spoolRetry) succeeded(d *Dispatcher) {
	if r.fails > 0 {
		d.log.Info(r.op + " works again")
	}
	r.fails = 0
}

// moveData copies the records' data into arena, points them at the copy,
// and returns arena grown by it.
func moveData(arena []byte, recs []spool.Record) []byte {
	for i := range recs {
		from := len(arena)
		arena = append(arena, recs[i].Data...)
		recs[i].Data = arena[from:len(arena):len(arena)]
	}
	return arena
}

// newBatchMem gives the batch being built a finished batch's memory, or
// new memory sized for a whole batch: records point into the arena, so
// every array a growing arena left behind would stay alive as long as the
// batch.
func (l *loop) newBatchMem() {
	if n := len(l.free); n > 0 {
		l.cur.mem = l.free[n-1]
		l.free[n-1] = nil
		l.free = l.free[:n-1]
	} else {
		l.cur.mem = &batchMem{arena: make([]byte, 0, l.d.dest.BatchBytes+maxEventSlack)}
	}
	l.cur.recs = l.cur.mem.recs[:0]
}

// maxEventSlack is room past batch_bytes: a read returns at least one
// event, and the one that fills a batch may overshoot it.
const maxEventSlack = 64 << 10

// putMem keeps a finished batch's memory for the next, up to one per
// batch in flight (no more than are alive at full load anyway; keeping
// one, the others became garbage, and collections cost 8% of W1's
// throughput), unless it outgrew the usual batch several times over.
func (l *loop) putMem(m *batchMem) {
	if len(l.free) >= l.d.dest.Concurrency || cap(m.arena) > 2*(l.d.dest.BatchBytes+maxEventSlack) || cap(m.private) > 2*(l.d.dest.BatchBytes+maxEventSlack) {
		return
	}
	clear(m.recs) // let go of write key strings
	m.recs, m.arena, m.private = m.recs[:0], m.arena[:0], m.private[:0]
	l.free = append(l.free, m)
}
