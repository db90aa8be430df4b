package spool

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"syscall"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

type appendReq struct {
	force bool // see submit
	done  chan error
	// source and skipped count the duplicates skipped once the request
	// succeeds; relies is the oldest earlier group holding the first copy
	// of one (dedupe.go).
	source  string
	skipped int
	relies  uint64
}

// Append stores events, and in the same commit the dead letters (events
// refused at ingest), and returns once they are durable per Config.Sync.
// Concurrent calls share one block and one fsync. On ErrFull or ErrClosed
// nothing of the call was stored. ctx is only checked on entry: once its
// events are in a commit, the call waits for that commit's outcome.
// Append stores every event it is given, MessageID or not: it is for
// events stored again on purpose, such as a replayed dead letter.
func (s *Spool) Append(ctx context.Context, events []Event, dead []DeadLetter) error {
	return s.submitAndWait(ctx, events, dead, false)
}

// AppendFrom is Append for events arriving from source (SourceHTTP,
// SourceKafka): an event with a MessageID whose write key and MessageID
// were stored within Config.DedupeWindow, or that come earlier in events,
// is skipped. It returns how many were skipped; they count in
// spillway_events_deduplicated_total{source} once the call succeeds.
func (s *Spool) AppendFrom(ctx context.Context, source string, events []Event, dead []DeadLetter) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	done, skipped, err := s.submit(source, events, dead, false)
	if err != nil {
		return 0, err
	}
	return skipped, <-done
}

func (s *Spool) submitAndWait(ctx context.Context, events []Event, dead []DeadLetter, force bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	done, _, err := s.submit("", events, dead, force)
	if err != nil {
		return err
	}
	return <-done
}

// Submit copies events and dead letters into the next commit and returns a
// channel that receives its outcome: nil once they are durable per
// Config.Sync. The caller's slices are its own again as soon as Submit
// returns, so a caller may recycle them while the commit runs.
func (s *Spool) Submit(events []Event, dead []DeadLetter) (<-chan error, error) {
	done, _, err := s.submit("", events, dead, false)
	return done, err
}

// SubmitFrom is Submit with AppendFrom's de-duplication: it also returns
// how many events it skipped.
func (s *Spool) SubmitFrom(source string, events []Event, dead []DeadLetter) (<-chan error, int, error) {
	return s.submit(source, events, dead, false)
}

// Writing is a two-stage pipeline. Submit copies events into the filling
// group's block bodies, numbering them; writeLoop takes the filling group,
// compresses its blocks in parallel and hands it to commitLoop, which
// writes each group's blocks in one transaction, so one fsync acknowledges
// them all (group commit). The filling group is taken when the committer
// is free, so that it holds everything that arrived during the last
// commit and its clients wait out one commit of their own; or, when it is
// full, while the previous group commits, so that its compression overlaps
// that fsync. Taken as soon as the previous group was handed over, it held
// only what arrived meanwhile, and the requests arriving during a commit
// waited for a second, nearly empty one. Copying at Submit lets a caller
// reuse its buffers while it waits: with 64 clients waiting out commits,
// their buffers were a fifth of the live heap.
type filling struct {
	reqs   []*appendReq
	blocks []*fillingBlock
	// dead and forcedDead are its dead letters' blocks, encoded as
	// stored; forced ones (from delivery) apart, since they are stored
	// even when the others are refused.
	dead, forcedDead []*fillingBlock
	bytes            int // event bytes copied in
	group            uint64
	keys             []uint64 // the messageId index's keys of its events
}

// fillingBlock is a block being filled: headerRoom bytes left free for the
// header, then the events as encodeBody lays them out; or dead letters
// first to last, as appendDeadLetter lays them out.
type fillingBlock struct {
	first, last uint64
	count       int
	body        *[]byte // from scratchBuffers
}

// headerRoom fits a block body's header: stored millis and a uvarint count.
const headerRoom = 8 + binary.MaxVarintLen64

type sealedGroup struct {
	reqs []*appendReq
	// dead is the group's dead letters, numbered and sealed with its
	// blocks, off the committer's path.
	dead   []deadBlock
	blocks []sealedBlock
	group  uint64
	keys   []uint64  // messageId index keys, logged with the blocks
	keysAt time.Time // when they count as stored
	rotate bool      // not a group: start a new generation
	// hot is the newest block's uncompressed body, from scratchBuffers,
	// for Spool.hot once committed.
	hot hotBlock
}

// hotBlock is the newest committed block, uncompressed: a destination that
// keeps up reads it right after its commit, and copying it is about twenty
// times cheaper than decompressing it from the recent blocks.
type hotBlock struct {
	meta blockMeta
	body []byte  // the block body, within *buf
	buf  *[]byte // from scratchBuffers; nil: none
}

type sealedBlock struct {
	key []byte
	recentBlock
	body []byte // uncompressed, valid until its scratch buffer is reused
}

// maxGroupBytes bounds the event bytes of one group commit. A group needs
// to hold what arrives during one fsync (a few ms: about 1 MiB at a quarter
// million events a second); more only holds memory and makes a commit's
// clients wait longer. Measured at W1 against 2 MiB: the same throughput,
// a lower p99, 6 MiB less peak RSS; 512 KiB cost 12% of the throughput.
const maxGroupBytes = 1 << 20

func (s *Spool) submit(source string, events []Event, dead []DeadLetter, force bool) (<-chan error, int, error) {
	r := &appendReq{force: force, done: make(chan error, 1)}
	if len(events) == 0 && len(dead) == 0 {
		r.done <- nil
		return r.done, 0, nil
	}
	size := sizeOfEvents(events)
	if !force {
		for i := range dead {
			size += len(dead[i].Event)
		}
	}
	var found *dedupeLookup
	if source != "" && s.dedupe.enabled() {
		found = s.dedupe.lookup(events)
		defer found.done()
	}
	s.fillMu.Lock()
	defer s.fillMu.Unlock()
	// Back-pressure: a full group waits for the writer to take it. Forced
	// dead letters hold no events and never wait.
	for size > 0 && s.fill.bytes > 0 && s.fill.bytes+size > maxGroupBytes && !s.fillClosed {
		s.fillFull = true
		s.kickWriter()
		s.fillTaken.Wait()
	}
	if s.fillClosed {
		return nil, 0, ErrClosed
	}
	if !force {
		if err := s.Ready(); err != nil {
			return nil, 0, err
		}
	}
	var dups []int
	if found != nil {
		dups, r.relies, s.fill.keys = s.dedupe.claim(found, s.fillGroup, s.fill.keys)
		r.source, r.skipped = source, len(dups)
		if len(dups) == len(events) && len(dead) == 0 && r.relies == 0 {
			s.dedupe.count(source, len(dups))
			r.done <- nil
			return r.done, len(dups), nil
		}
	}
	// force skips the size bound and the free-space reserve: dead letters
	// from delivery must be storable in a full spool, or the events they
	// hold up could never be acknowledged and their space never freed.
	f := &s.fill
	var b *fillingBlock
	if n := len(f.blocks); n > 0 {
		b = f.blocks[n-1]
	}
	for i := range events {
		if len(dups) > 0 && dups[0] == i {
			dups = dups[1:]
			continue
		}
		if b == nil || len(*b.body)-headerRoom >= maxBlockBytes {
			b = &fillingBlock{first: s.assigned, body: scratchBuffers.get()}
			*b.body = append((*b.body)[:0], make([]byte, headerRoom)...)
			f.blocks = append(f.blocks, b)
		}
		*b.body = appendEvent(*b.body, &events[i])
		b.count++
		s.assigned++
	}
	if len(dead) > 0 {
		s.fillDead(f, dead, force)
	}
	f.reqs = append(f.reqs, r)
	f.bytes += size
	s.kickWriter()
	return r.done, r.skipped, nil
}

// fillDead numbers dead letters, dates those that have no date yet and
// encodes them into the filling group's blocks, as events are: copied
// once, straight into the buffer they are compressed from. A block holds
// consecutive ids only, so that no two stored blocks' ranges overlap:
// every dead letter is numbered here, under fillMu. s.fillMu is held.
func (s *Spool) fillDead(f *filling, dead []DeadLetter, force bool) {
	blocks := &f.dead
	if force {
		blocks = &f.forcedDead
	}
	var b *fillingBlock
	if n := len(*blocks); n > 0 {
		b = (*blocks)[n-1]
	}
	id := s.nextDead.Add(uint64(len(dead))) - uint64(len(dead))
	var now time.Time
	for i := range dead {
		d := &dead[i]
		at := d.At
		if at.IsZero() {
			if now.IsZero() {
				now = time.Now()
			}
			at = now
		}
		if b == nil || b.last+1 != id || len(*b.body)+deadLetterSize(d) > deadBlockRawBytes {
			b = &fillingBlock{first: id, body: deadBuffers.get()}
			*b.body = (*b.body)[:0]
			*blocks = append(*blocks, b)
		}
		*b.body = appendDeadLetter(*b.body, d, id, at)
		b.last = id
		b.count++
		id++
	}
}

func (s *Spool) kickWriter() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// takeFill returns the filling group and starts an empty one; nil if
// nothing is in it. s.fillMu must be held.
func (s *Spool) takeFill() *filling {
	if len(s.fill.reqs) == 0 {
		return nil
	}
	f := s.fill
	f.group = s.fillGroup
	s.fillGroup++
	s.fill = filling{}
	s.fillFull = false
	s.fillTaken.Broadcast()
	return &f
}

func (s *Spool) writeLoop() {
	defer close(s.sealed)
	busy := false // the committer holds what it was last handed
	handOver := func(sg *sealedGroup) {
		if busy {
			<-s.committed
		}
		s.sealed <- sg
		busy = true
	}
	for {
		select {
		case <-s.kick:
		case <-s.committed:
			busy = false
		case <-s.rotate:
			handOver(&sealedGroup{rotate: true})
			continue
		case <-s.quit:
			// Commit what was submitted before the door closed.
			s.fillMu.Lock()
			s.fillClosed = true
			f := s.takeFill()
			s.fillTaken.Broadcast()
			s.fillMu.Unlock()
			if f != nil {
				handOver(s.seal(f))
			}
			return
		}
		s.fillMu.Lock()
		var f *filling
		if !busy || s.fillFull {
			f = s.takeFill()
		}
		s.fillMu.Unlock()
		if f != nil {
			handOver(s.seal(f))
		}
	}
}

// seal compresses the group's blocks.
func (s *Spool) seal(f *filling) *sealedGroup {
	sg := &sealedGroup{reqs: f.reqs, group: f.group}
	defer func() {
		for _, b := range f.blocks {
			if b.body != nil {
				scratchBuffers.put(b.body)
			}
		}
		for _, blocks := range [][]*fillingBlock{f.dead, f.forcedDead} {
			for _, b := range blocks {
				deadBuffers.put(b.body)
			}
		}
	}()
	dead := f.forcedDead
	refused := s.checkDiskRoom()
	if refused != nil {
		// Only forced requests (dead letters from delivery, which hold no
		// events) go on; the numbers the others took are skipped.
		kept := sg.reqs[:0:0]
		for _, r := range sg.reqs {
			if r.force {
				kept = append(kept, r)
			} else {
				r.done <- refused
			}
		}
		sg.reqs = kept
	} else {
		dead = append(dead, f.dead...)
		sg.keys, sg.keysAt = f.keys, s.dedupe.now()
		sg.blocks = make([]sealedBlock, len(f.blocks))
	}
	// Compression is most of a group's CPU: spread its blocks, the dead
	// letters' among them, over the cores, no more at once than there are
	// coders kept.
	var wg sync.WaitGroup
	slots := make(chan struct{}, runtime.GOMAXPROCS(0))
	sg.dead = make([]deadBlock, len(dead))
	for i, b := range dead {
		slots <- struct{}{}
		wg.Go(func() {
			sg.dead[i] = deadBlock{first: b.first, last: b.last, count: b.count, val: sealBlock(*b.body)}
			<-slots
		})
	}
	stored := time.Now()
	for i := range sg.blocks {
		slots <- struct{}{}
		wg.Go(func() {
			sg.blocks[i] = sealFillingBlock(f.blocks[i], stored)
			<-slots
		})
	}
	wg.Wait()
	if refused != nil {
		s.settleDedupe(f.group, f.keys, time.Time{}, ErrFull)
		return sg
	}
	if n := len(f.blocks); n > 0 {
		last := f.blocks[n-1]
		sg.hot = hotBlock{meta: sg.blocks[n-1].meta, body: sg.blocks[n-1].body, buf: last.body}
		last.body = nil // now the group's, not the free list's
	}
	return sg
}

func sizeOfEvents(events []Event) int {
	n := 0
	for i := range events {
		n += len(events[i].Data) + len(events[i].WriteKey) + len(events[i].Dest)
	}
	return n
}

func sealFillingBlock(b *fillingBlock, stored time.Time) sealedBlock {
	var hdr [headerRoom]byte
	h := appendBodyHeader(hdr[:0], stored, b.count)
	body := (*b.body)[headerRoom-len(h):]
	copy(body, h)
	m := blockMeta{first: b.first, count: uint32(b.count), stored: stored}
	return sealedBlock{key: blockKey(m.first, m.count, m.stored), recentBlock: recentBlock{meta: m, val: sealBlock(body)}, body: body}
}

// commitLoop is the only goroutine that writes to the active generation
// and replaces it.
func (s *Spool) commitLoop() {
	for sg := range s.sealed {
		s.commitOne(sg)
		s.committed <- struct{}{}
	}
	s.freezeDedupe(true)
	s.dedupe.stop()
}

func (s *Spool) commitOne(sg *sealedGroup) {
	if sg.rotate {
		s.rotateGeneration()
		return
	}
	err := s.commitGroup(sg)
	if sg.hot.buf != nil { // not committed
		scratchBuffers.put(sg.hot.buf)
	}
	s.settleDedupe(sg.group, sg.keys, sg.keysAt, err)
	for _, r := range sg.reqs {
		rerr := err
		if rerr == nil {
			rerr = s.dedupe.failedSince(r.relies)
		}
		if rerr == nil {
			s.dedupe.count(r.source, r.skipped)
		}
		r.done <- rerr
	}
	s.freezeDedupe(false)
	if s.activeBytes >= genMaxBytes || time.Since(s.active.startedAt()) >= genMaxAge {
		s.rotateGeneration()
	}
}

func (s *Spool) rotateGeneration() {
	// The generation left may be dropped as soon as it is delivered: the
	// messageId keys logged in it must be in the index's own files first.
	s.freezeDedupe(true)
	if s.activeBytes == 0 {
		s.active.setStarted(time.Now()) // nothing to give back yet
		return
	}
	if err := s.startGeneration(); err != nil {
		// Writing on in the current generation is safe; it only delays
		// reclaiming space.
		s.log.Error("start new generation", "err", err)
		return
	}
	s.metrics.generations.Inc()
}

func (s *Spool) commitGroup(sg *sealedGroup) error {
	if len(sg.dead) == 0 {
		return s.commitBlocks(sg)
	}
	if len(sg.blocks) == 0 {
		return s.commitDeadLetters(sg.dead)
	}
	// Dead letters have their own files, the events the active
	// generation: committed at once, the group waits for one fsync's time
	// instead of two. Its requests are answered only once both are durable; if one
	// fails they are answered with the error, and the client's retry
	// stores again what the other made durable: at worst a dead letter
	// or an event stored twice, never one lost.
	deadErr := make(chan error, 1)
	go func() { deadErr <- s.commitDeadLetters(sg.dead) }()
	err := s.commitBlocks(sg)
	if derr := <-deadErr; err == nil {
		err = derr
	}
	return err
}

// commitBlocks commits the group's event blocks to the active generation.
func (s *Spool) commitBlocks(sg *sealedGroup) error {
	if len(sg.blocks) == 0 {
		return nil
	}
	if err := s.ensureLease(sg.blocks[len(sg.blocks)-1].meta.end()); err != nil {
		return s.writeError(err)
	}
	start := time.Now()
	err := s.active.db.Update(func(txn *badger.Txn) error {
		for _, b := range sg.blocks {
			if err := txn.Set(b.key, b.val); err != nil {
				return err
			}
		}
		if len(sg.keys) > 0 {
			// In the blocks' transaction: durable with its events, or not
			// at all (dedupe.go).
			return txn.Set(dedupeLogKey(sg.blocks[0].meta.first), dedupeLogValue(sg.keysAt, sg.keys))
		}
		return nil
	})
	if err != nil {
		return s.writeError(err)
	}
	if s.cfg.Sync == SyncAlways {
		// With SyncInterval the commit is no fsync: syncLoop counts those.
		s.metrics.fsync.Observe(time.Since(start).Seconds())
	}
	s.metrics.blocks.Add(float64(len(sg.blocks)))
	s.active.mu.Lock()
	s.active.blocks += len(sg.blocks)
	s.active.mu.Unlock()
	var written int64
	for _, b := range sg.blocks {
		written += int64(len(b.val))
	}
	if s.activeBytes == 0 {
		// Its age counts from its first events: one that waited empty
		// through an idle hour is not due for rotation at once, which
		// would open a generation on the commit path.
		s.active.setStarted(time.Now())
	}
	s.activeBytes += written // the writer's alone: no lock
	if s.logUnreleased += written; s.logUnreleased >= releaseLogEveryBytes {
		s.logUnreleased = 0
		select {
		case s.logPagesDue <- struct{}{}:
		default:
		}
	}
	s.writtenSince.Add(written)
	s.mu.Lock()
	for _, b := range sg.blocks {
		s.next = b.meta.end()
		s.recent = append(s.recent, b.recentBlock)
		s.recentLen += len(b.val)
	}
	for s.recentLen > recentCacheBytes && len(s.recent) > 1 {
		s.recentLen -= len(s.recent[0].val)
		s.recent[0] = recentBlock{}
		s.recent = s.recent[1:]
	}
	if sg.hot.buf != nil {
		if s.hot.buf != nil {
			scratchBuffers.put(s.hot.buf) // readers copy it under s.mu only
		}
		s.hot, sg.hot = sg.hot, hotBlock{}
	}
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	return nil
}

// checkDiskRoom refuses a write when the file system is nearly full.
// Badger writes through mmapped files, where running out of space is a
// SIGBUS rather than an error, so we stop while room remains.
func (s *Spool) checkDiskRoom() error {
	free, err := freeBytes(s.cfg.Dir)
	if err != nil {
		return nil // unknown: let the write itself find out
	}
	if free < uint64(s.cfg.MinFreeBytes) {
		if !s.lowDisk.Swap(true) {
			s.log.Error("disk nearly full: refusing events until space returns", "free_bytes", free, "min_free_bytes", s.cfg.MinFreeBytes)
		}
		return fmt.Errorf("%w: %d bytes free on the spool's file system", ErrFull, free)
	}
	return nil
}

// writeError maps a failed write. A full disk is ErrFull so that clients
// retry later instead of giving up.
func (s *Spool) writeError(err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		s.lowDisk.Store(true)
		s.log.Error("disk full: refusing events until space returns", "err", err)
		return fmt.Errorf("%w: %v", ErrFull, err)
	}
	return fmt.Errorf("write block: %w", err)
}

func freeBytes(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}
