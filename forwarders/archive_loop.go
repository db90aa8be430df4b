package forwarders

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/valyala/fastjson"

	"github.com/spillwayhq/spillway/spool"
)

// rangeStore is what the archive needs of the spool besides store: the
// durable record of the object being written (spool/pending.go).
type rangeStore interface {
	store
	SetPending(consumer string, p spool.Pending) error
	PendingRange(consumer string) (spool.Pending, bool, error)
	ScratchFile() (*os.File, error)
}

// archiveForwarder writes objects of gzip NDJSON to a store. Its
// destination is not driven by the shared loop (loop.go) but by
// runArchive, which cuts objects by sequence range and keeps them exactly
// once in the bucket.
type archiveForwarder struct {
	dest  Destination
	store objectStore
}

var _ Forwarder = (*archiveForwarder)(nil)

func newArchive(d Destination) (*archiveForwarder, error) {
	s, err := newS3Store(d)
	if err != nil {
		return nil, fmt.Errorf("destination %s: %w", d.Name, err)
	}
	return &archiveForwarder{dest: d, store: s}, nil
}

func (a *archiveForwarder) Kind() string { return KindArchive }

// Send writes batch as one object named by its range, under the
// archive's prefix.
func (a *archiveForwarder) Send(ctx context.Context, batch []spool.Record) error {
	if len(batch) == 0 {
		return nil
	}
	o := objectBuilder{sink: &memorySink{}}
	for _, r := range batch {
		if err := o.add(r); err != nil {
			return err
		}
	}
	body, size, err := o.finish()
	if err != nil {
		return err
	}
	return a.store.put(ctx, o.key(a.dest.Archive.Prefix, ""), body, size)
}

func (a *archiveForwarder) Close(context.Context) error { return nil }

// objectBuilder compresses events into one object as they come, into
// its sink: a scratch file for the objects of an archive's loop, so that
// an object of 64 MiB of events (about 10 MiB compressed) costs no memory
// but the compressor's.
// klauspost's gzip, not the standard library's: under W1 spillway's CPU
// per event with the archive fell from 2.9 to 1.9 times the webhook's,
// compressing being most of what the archive costs (scripts/archivebench),
// and at a fast level (archiveGzipLevel).
// The same records always give the same bytes (gzip without a time or a
// name in its header), so an object written again after a crash is the
// same object.
type objectBuilder struct {
	sink        objectSink
	zw          *gzip.Writer
	err         error // the sink's first failure: the object is lost
	first, last uint64
	events      int
	raw         int       // uncompressed bytes
	received    time.Time // receivedAt of the first event: its partition
	started     time.Time // when the first event was added: the flush clock
	line        []byte
	keyJSON     []byte // the JSON string of lastKey
	lastKey     string
}

// archiveGzipLevel is klauspost's level 2: on W1's events it compressed
// 1.6 times as fast as the default level, to objects 9% larger (5.7 to
// 1 against 6.2 to 1). Compressing is most of the archive's CPU, and a
// sidecar's CPU costs more than a bucket's bytes.
const archiveGzipLevel = 2

// objectSink holds an object's compressed bytes until its upload.
type objectSink interface {
	io.Writer
	// reset empties the sink for the next object.
	reset() error
	// contents returns what was written since reset, valid until the next
	// reset.
	contents() (io.ReaderAt, int64, error)
}

// memorySink keeps an object in memory: for Send, whose batches are small.
type memorySink struct{ bytes.Buffer }

func (m *memorySink) reset() error { m.Buffer.Reset(); return nil }

func (m *memorySink) contents() (io.ReaderAt, int64, error) {
	return bytes.NewReader(m.Bytes()), int64(m.Len()), nil
}

// fileSink keeps an object in a scratch file (Spool.ScratchFile), which
// the upload reads back: seekable and of known length, so the client
// neither buffers it nor frames it as aws-chunked. One file serves object
// after object; after a failure the next object opens another.
type fileSink struct {
	open func() (*os.File, error)
	f    *os.File // nil until an object needs it
	w    *bufio.Writer
	size int64
}

// scratchBuffer batches the compressor's small writes into the file.
const scratchBuffer = 64 << 10

func (s *fileSink) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	s.size += int64(n)
	return n, err
}

func (s *fileSink) reset() error {
	s.size = 0
	if s.f == nil {
		f, err := s.open()
		if err != nil {
			return err
		}
		s.f, s.w = f, bufio.NewWriterSize(io.NewOffsetWriter(f, 0), scratchBuffer)
		return nil
	}
	s.w.Reset(io.NewOffsetWriter(s.f, 0))
	// Truncated, the file gives its blocks back between objects.
	if err := s.f.Truncate(0); err != nil {
		return fmt.Errorf("truncate scratch file: %w", err)
	}
	return nil
}

// close closes the file, which frees its space.
func (s *fileSink) close() {
	if s.f != nil {
		_ = s.f.Close() // unlinked and never synced: nothing to lose
		s.f = nil
	}
}

func (s *fileSink) contents() (io.ReaderAt, int64, error) {
	if err := s.w.Flush(); err != nil {
		return nil, 0, fmt.Errorf("write scratch file: %w", err)
	}
	return s.f, s.size, nil
}

// add appends r's event as one line, with its write key as a "writeKey"
// field in front, so that a replay sends it under the key it came with.
func (o *objectBuilder) add(r spool.Record) error {
	if o.events == 0 {
		if o.err = o.sink.reset(); o.err != nil {
			return o.err
		}
		if o.zw == nil {
			o.zw, _ = gzip.NewWriterLevel(o.sink, archiveGzipLevel) // a valid level
		} else {
			o.zw.Reset(o.sink)
		}
		o.first, o.started = r.Seq, time.Now()
		o.received = receivedAt(r)
	} else if o.err != nil {
		return o.err
	}
	o.line = o.line[:0]
	if r.WriteKey != "" && len(r.Data) > 1 && r.Data[0] == '{' {
		if r.WriteKey != o.lastKey || o.keyJSON == nil {
			o.keyJSON, _ = json.Marshal(r.WriteKey) // a string always marshals
			o.lastKey = r.WriteKey
		}
		o.line = append(o.line, `{"writeKey":`...)
		o.line = append(o.line, o.keyJSON...)
		if !bytes.Equal(bytes.TrimSpace(r.Data[1:]), []byte("}")) {
			o.line = append(o.line, ',')
		}
		o.line = append(o.line, r.Data[1:]...)
	} else {
		o.line = append(o.line, r.Data...)
	}
	o.line = append(o.line, '\n')
	if _, err := o.zw.Write(o.line); err != nil {
		o.err = fmt.Errorf("compress object: %w", err)
		return o.err
	}
	o.last = r.Seq
	o.events++
	o.raw += len(o.line)
	return nil
}

// receivedAt is when the proxy received r's event, from its receivedAt
// field, else when its block was stored.
func receivedAt(r spool.Record) time.Time {
	if s := fastjson.GetString(r.Data, "receivedAt"); s != "" {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			return t.UTC()
		}
	}
	return r.Stored.UTC()
}

// finish closes the gzip stream and returns the object's bytes, valid
// until reset.
func (o *objectBuilder) finish() (io.ReaderAt, int64, error) {
	if o.err != nil {
		return nil, 0, o.err
	}
	if err := o.zw.Close(); err != nil {
		return nil, 0, fmt.Errorf("compress object: %w", err)
	}
	return o.sink.contents()
}

func (o *objectBuilder) key(prefix, under string) string {
	return ObjectKey(prefix, under, o.received, o.first, o.last)
}

// reset forgets the object: the next add starts another.
func (o *objectBuilder) reset() {
	o.events, o.raw, o.err = 0, 0, nil
}

// archiveLoop is the state of an archive's runArchive. Objects go one at
// a time, each decided before its upload: its range is recorded in the
// spool (SetPending) first, the upload is retried until the store
// confirms it, the record is marked confirmed, and only then does the
// cursor move. After a crash an unconfirmed range is cut again with the
// same bounds, so it overwrites its object with the same bytes; and
// whatever the lazily saved cursor says, nothing at or below a confirmed
// range goes into a second object.
type archiveLoop struct {
	d     *Dispatcher
	a     *archiveForwarder
	sp    rangeStore
	ctx   context.Context
	recs  []spool.Record
	arena []byte
	next  int // recs[next:] are read and not yet taken
	idle  bool
	// from is the first event not in a confirmed object: everything
	// below it is archived, or filtered out.
	from uint64
	// redo is an unconfirmed range found at start-up, cut again as it was.
	redo     *spool.Pending
	obj      objectBuilder
	file     *fileSink // obj's sink
	private  []byte
	changed  <-chan struct{}
	reads    spoolRetry
	scratch  spoolRetry // of the object's scratch file
	draining bool
	drain    <-chan struct{}
	timer    *time.Timer
}

// archiveRead is how much one spool read takes: the object grows by it.
const archiveRead = 1 << 20

// loopFunc is the delivery loop of d's kind: runArchive for an archive,
// run for every other.
func (d *Dispatcher) loopFunc() func(context.Context) {
	if a, ok := d.fwd.(*archiveForwarder); ok {
		return func(ctx context.Context) { d.runArchive(ctx, a) }
	}
	return d.run
}

func (d *Dispatcher) runArchive(ctx context.Context, a *archiveForwarder) {
	sp, ok := d.sp.(rangeStore)
	if !ok {
		d.log.Error("the spool cannot record object ranges; the archive does not run")
		return
	}
	l := &archiveLoop{
		d: d, a: a, sp: sp, ctx: ctx, drain: d.drain,
		reads:   spoolRetry{op: "read from spool", errPrefix: "read spool"},
		scratch: spoolRetry{op: "write the object's scratch file", errPrefix: "scratch file"},
		timer:   time.NewTimer(time.Hour),
	}
	l.timer.Stop()
	if !l.loadMark() {
		return
	}
	scratch := &fileSink{open: sp.ScratchFile}
	defer scratch.close()
	l.obj.sink, l.file = scratch, scratch
	for {
		if l.fill() {
			if !l.upload() {
				return
			}
			continue
		}
		if l.obj.events == 0 && l.caughtUp() {
			// What was read went into confirmed objects or was filtered
			// out: done, up to the read position.
			if err := d.sp.Ack(d.dest.Name, d.sp.Position(d.dest.Name)); err == nil && l.draining {
				d.drainOnce.Do(func() { close(d.drained) })
			}
		}
		if !l.wait() {
			return
		}
	}
}

// loadMark reads the last recorded range, retrying a failing read until
// ctx ends.
func (l *archiveLoop) loadMark() bool {
	retry := spoolRetry{op: "read the archive's pending range", errPrefix: "read pending range"}
	for {
		p, ok, err := l.sp.PendingRange(l.d.dest.Name)
		if err == nil {
			l.from, l.redo = resumeAt(p, ok)
			retry.succeeded(l.d)
			return true
		}
		retry.failed(l.d, err)
		if !sleep(l.ctx, time.Until(retry.at)) {
			return false
		}
	}
}

// resumeAt says where a consumer whose last recorded range is p (if ok)
// starts: after a confirmed range, or at an unconfirmed one, to cut it
// again as it was (redo).
func resumeAt(p spool.Pending, ok bool) (from uint64, redo *spool.Pending) {
	switch {
	case !ok:
		return 0, nil
	case p.Confirmed:
		return p.Last + 1, nil
	}
	return p.First, &p
}

// fill reads and compresses events into the object until it is due: true
// when it is, false when there is nothing more for now (or ctx ended).
func (l *archiveLoop) fill() bool {
	for l.ctx.Err() == nil {
		if l.next == len(l.recs) {
			if !l.reads.due(time.Now()) || !l.read() {
				return l.due()
			}
		}
		if l.take() {
			return true
		}
	}
	return false
}

func (l *archiveLoop) read() bool {
	d := l.d
	l.changed = d.sp.Changed()
	recs, arena, err := d.sp.ReadInto(d.dest.Name, l.recs[:0], l.arena[:0], 1<<16, archiveRead)
	l.recs, l.arena, l.next = recs, arena, 0
	l.idle = len(recs) == 0
	if err != nil {
		l.reads.failed(d, err)
		return false
	}
	l.reads.succeeded(d)
	return !l.idle
}

// take moves read records into the object; true once it is full or, for
// a range cut again, complete.
func (l *archiveLoop) take() bool {
	d, o := l.d, &l.obj
	for l.next < len(l.recs) {
		r := l.recs[l.next]
		if l.redo != nil && r.Seq > l.redo.Last {
			return true
		}
		l.next++
		if r.Seq < l.from || !d.route.wants(r.Data) {
			continue
		}
		if d.privacy != nil {
			out, err := d.privacy.Apply(l.private[:0], r.Data)
			if err == nil {
				l.private, r.Data = out, out
			} else {
				d.log.Error("apply privacy rules; archiving the event as it is", keyError, err)
			}
		}
		if err := o.add(r); err != nil {
			return true // upload finds the object broken, and drops it
		}
		if l.redo == nil && (o.raw >= d.dest.BatchBytes || o.events >= d.dest.BatchEvents) {
			return true
		}
	}
	return false
}

// due says whether the object should go now that nothing more is read:
// its flush time has come, the destination is draining, or the range cut
// again is whole (the spool has nothing left below its end).
func (l *archiveLoop) due() bool {
	if l.redo != nil {
		return l.idle && l.d.sp.Position(l.d.dest.Name) > l.redo.Last
	}
	return l.obj.events > 0 && (l.draining && l.idle || !time.Now().Before(l.flushAt()))
}

func (l *archiveLoop) flushAt() time.Time { return l.obj.started.Add(l.d.dest.Flush) }

func (l *archiveLoop) caughtUp() bool {
	return l.idle && l.next == len(l.recs) && l.reads.fails == 0 && l.redo == nil
}

// upload writes the object, retried until the store confirms it or ctx
// ends (false), then moves the cursor past it.
func (l *archiveLoop) upload() bool {
	d, o := l.d, &l.obj
	if o.err != nil {
		return l.discard(o.err)
	}
	if o.events == 0 {
		// A range cut again found none of its events (dropped while the
		// spool was full): there is no object to write.
		l.from, l.redo = l.redo.Last+1, nil
		return true
	}
	body, size, err := o.finish()
	if err != nil {
		return l.discard(err)
	}
	p := spool.Pending{First: o.first, Last: o.last}
	if l.redo == nil && !l.record(p) {
		return false
	}
	key := o.key(d.dest.Archive.Prefix, "")
	if !l.put(key, body, size) {
		return false
	}
	l.scratch.succeeded(d)
	p.Confirmed = true
	if !l.record(p) {
		return false
	}
	l.from, l.redo = p.Last+1, nil
	d.deliveredN(o.events)
	if err := d.sp.Ack(d.dest.Name, p.Last+1); err != nil {
		// The mark says the range is archived: a restart skips it
		// whatever the cursor says.
		d.log.Error("acknowledge to spool failed", keyError, err)
	}
	o.reset()
	return true
}

// discard drops the object being built, whose scratch file failed (a
// full disk, say), and reads its events again from the cursor into
// another file after a backoff. Nothing of it was uploaded: if its range was recorded, it is
// cut again with the same bounds.
func (l *archiveLoop) discard(err error) bool {
	d := l.d
	l.obj.reset()
	l.file.close()
	l.scratch.failed(d, err)
	if err := d.sp.Rewind(d.dest.Name); err != nil {
		l.reads.failed(d, err)
	}
	l.recs, l.next = l.recs[:0], 0
	return sleep(l.ctx, time.Until(l.scratch.at))
}

// record writes p to the spool, retrying until it works or ctx ends.
func (l *archiveLoop) record(p spool.Pending) bool {
	retry := spoolRetry{op: "record the archive's object range", errPrefix: "record range"}
	for {
		err := l.sp.SetPending(l.d.dest.Name, p)
		if err == nil {
			retry.succeeded(l.d)
			return true
		}
		retry.failed(l.d, err)
		if !sleep(l.ctx, time.Until(retry.at)) {
			return false
		}
	}
}

// put uploads one object through the gate: one probe at a time while the
// store fails, backoff with jitter, backoff_max while misconfigured.
func (l *archiveLoop) put(key string, body io.ReaderAt, size int64) bool {
	d := l.d
	var notBefore time.Time
	fails := 0
	for {
		probe, err := d.gate.acquire(l.ctx, notBefore, time.Time{})
		if err != nil {
			return false
		}
		start := time.Now()
		err = l.a.store.put(l.ctx, key, body, size)
		d.mDuration.Observe(time.Since(start).Seconds())
		if err == nil {
			d.report(d.gate.success(probe))
			return true
		}
		if l.ctx.Err() != nil {
			d.gate.abandon(probe)
			return false
		}
		fails++
		var (
			mis *MisconfiguredError
			ret *RetryableError
		)
		d.setLastErr(err)
		d.mu.Lock()
		d.lastFail = err
		d.mu.Unlock()
		misconfigured := errors.As(err, &mis)
		var after time.Duration
		if errors.As(err, &ret) {
			after = ret.After
		}
		d.report(d.gate.failure(probe, err, misconfigured, after))
		d.retry(retryReason(err))
		if misconfigured {
			notBefore = time.Now().Add(d.dest.BackoffMax)
		} else {
			notBefore = time.Now().Add(jitter(d.dest.BackoffMin, d.dest.BackoffMax, fails, after))
		}
	}
}

// wait waits for new events, the flush time, a retry of a failed read or
// the drain; false when ctx ended.
func (l *archiveLoop) wait() bool {
	var deadline time.Time
	if l.obj.events > 0 {
		deadline = l.flushAt()
	}
	if l.reads.fails > 0 {
		deadline = earliest(deadline, l.reads.at)
	}
	var timer <-chan time.Time
	if !deadline.IsZero() {
		l.timer.Reset(time.Until(deadline))
		timer = l.timer.C
		defer l.timer.Stop()
	}
	var changed <-chan struct{}
	if l.idle && l.reads.fails == 0 {
		changed = l.changed
	}
	select {
	case <-l.ctx.Done():
		return false
	case <-changed:
	case <-timer:
	case <-l.drain:
		l.draining, l.drain = true, nil
	}
	return true
}
