package spool

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/y"
)

// Read returns up to maxEvents records (and about maxBytes of Data, always
// at least one record when any is there) past the consumer's read position,
// and advances that position. It never blocks: an empty result means
// nothing new, and Changed tells when there is.
func (s *Spool) Read(consumer string, maxEvents, maxBytes int) ([]Record, error) {
	recs, _, err := s.ReadInto(consumer, nil, nil, maxEvents, maxBytes)
	return recs, err
}

// ReadInto is Read appending the records to recs and their Data to arena,
// so that a reader recycling both allocates nothing per event. Data stays
// valid for as long as the caller leaves arena's memory alone; records
// already in recs are untouched even if arena has to grow.
func (s *Spool) ReadInto(consumer string, recs []Record, arena []byte, maxEvents, maxBytes int) (_ []Record, _ []byte, err error) {
	c, err := s.consumer(consumer)
	if err != nil {
		return recs, arena, err
	}
	if s.closing.Load() {
		return recs, arena, ErrClosed
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s.mu.Lock()
	next := s.next
	s.mu.Unlock()

	from, kept, keptArena := c.pos, len(recs), len(arena)
	defer func() {
		if err != nil {
			c.pos, recs, arena = from, recs[:kept], arena[:keptArena]
		}
	}()
	n, bytes := 0, 0
	for c.pos < next && n < maxEvents && (bytes < maxBytes || n == 0) {
		b, err := s.blockFor(c, c.pos)
		if err != nil {
			return recs, arena, err
		}
		if b == nil { // nothing stored at or after pos: a reclaimed or quarantined tail
			c.pos = next
			break
		}
		c.cur = b
		c.pos = max(c.pos, b.first)
		for i := int(c.pos - b.first); i < len(b.recs); i++ {
			if n >= maxEvents || (bytes >= maxBytes && n > 0) {
				break
			}
			c.pos++
			if d := b.dests[i]; d != "" && d != c.name {
				continue
			}
			// The block's memory is reused for the consumer's next block.
			r := b.recs[i]
			from := len(arena)
			arena = append(arena, r.Data...)
			r.Data = arena[from:len(arena):len(arena)]
			recs = append(recs, r)
			n++
			bytes += len(r.Data)
		}
	}
	if c.pos > c.savedRead.Load() {
		if err := s.leaseReads(c, c.pos+readLeaseEvents); err != nil {
			return recs, arena, err
		}
	}
	return recs, arena, nil
}

// readLeaseEvents is how far ahead of what a consumer has read its read
// mark is written: one meta commit per this many events read, and after a
// crash up to this many more counted as sent again than were.
const readLeaseEvents = 8192

// leaseReads writes consumer c's read mark as upTo before events up to it
// are handed out, so that a crash never sends again what it did not
// count (spillway_events_resent_total). The caller holds c.mu.
func (s *Spool) leaseReads(c *consumer, upTo uint64) error {
	err := s.meta.Update(func(txn *badger.Txn) error {
		return txn.Set(readMarkKey(c.name), binary.BigEndian.AppendUint64(nil, upTo))
	})
	if err != nil {
		return fmt.Errorf("save read mark: %w", err)
	}
	s.noteUnsynced()
	c.savedRead.Store(upTo)
	return nil
}

// blockFor returns the block holding seq or, when that is gone, the next
// one after it; nil when there is none.
func (s *Spool) blockFor(c *consumer, seq uint64) (*decodedBlock, error) {
	if b := c.cur; b != nil && b.first <= seq && seq < b.first+uint64(len(b.recs)) {
		return b, nil
	}
	// Blocks are decoded into c.block's memory, which c.cur may point to.
	c.cur = nil
	s.mu.Lock()
	if h := s.hot; h.buf != nil && h.meta.first <= seq && seq < h.meta.end() {
		// Copied under the lock: the writer recycles the buffer when the
		// next block takes its place.
		c.block.raw = append(c.block.raw[:0], h.body...)
		s.mu.Unlock()
		if err := c.block.decodeRaw(h.meta); err == nil {
			s.leaveGeneration(c, nil)
			return &c.block, nil
		}
		s.mu.Lock()
	}
	var fresh recentBlock
	if i := s.recentIndex(seq); i >= 0 {
		fresh = s.recent[i]
	}
	s.mu.Unlock()
	if fresh.val != nil {
		// A block that fails here failed in memory; reading it back from
		// disk below decides whether it is quarantined.
		if err := c.block.open(fresh.meta, fresh.val); err == nil {
			s.leaveGeneration(c, nil)
			return &c.block, nil
		}
	}
	for {
		g, m, ok, err := s.blockAtOrAfter(seq)
		if err != nil {
			return nil, fmt.Errorf("open generation to read: %w", err)
		}
		if !ok {
			return nil, nil
		}
		if m.end() <= seq {
			// Only a damaged key could say so: stop here rather than spin.
			return nil, fmt.Errorf("%w: block key %d+%d does not reach past %d", errCorrupt, m.first, m.count, seq)
		}
		if s.isQuarantined(m.first) {
			seq = m.end()
			continue
		}
		b, err := s.loadBlock(g, m, &c.block)
		if err == nil {
			s.leaveGeneration(c, g)
			return b, nil
		}
		if !errors.Is(err, errCorrupt) {
			return nil, err
		}
		if err := s.quarantine(g, m, err); err != nil {
			return nil, err
		}
		seq = m.end()
	}
}

// leaveGeneration records that c now reads from g (nil: from memory) and
// closes the generation it read from before, unless another reader holds
// it. Reading maps a value log page by page; a drain walking through a
// backlog's generations kept several of them, 130 MB, resident between
// two passes of the maintenance loop. Another consumer still reading the
// closed generation reopens it.
func (s *Spool) leaveGeneration(c *consumer, g *generation) {
	if c.onDisk == g {
		return
	}
	if c.onDisk != nil {
		c.onDisk.closeIfUnused(s.log)
	}
	c.onDisk = g
}

// loadBlock reads and decodes a block into b's memory.
func (s *Spool) loadBlock(g *generation, m blockMeta, b *decodedBlock) (*decodedBlock, error) {
	db, err := g.acquire(s.openFinished)
	if err != nil {
		return nil, err
	}
	defer g.release()
	var decodeErr error
	err = db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(blockKey(m.first, m.count, m.stored))
		if err != nil {
			return err
		}
		// Decoded straight from Badger's buffer: decoding copies what it
		// keeps, so no copy of the stored value is needed.
		return item.Value(func(val []byte) error {
			decodeErr = b.open(m, val)
			return nil
		})
	})
	// The key was just listed: not finding it is damage, and an empty block
	// in its place would leave the reader on it for ever.
	if errors.Is(err, y.ErrChecksumMismatch) || errors.Is(err, badger.ErrKeyNotFound) {
		return nil, fmt.Errorf("%w: %v", errCorrupt, err)
	}
	if err != nil {
		return nil, fmt.Errorf("read block %d: %w", m.first, err)
	}
	if decodeErr != nil {
		return nil, decodeErr
	}
	return b, nil
}

// open decodes a stored block value into b, reusing b's memory, and checks
// it against its key.
func (b *decodedBlock) open(m blockMeta, val []byte) error {
	if cap(b.raw) > 4*maxBlockBytes {
		b.raw = nil // an outsized block's memory is not kept
	}
	raw, err := openBlockInto(b.raw, val)
	if err != nil {
		return err
	}
	b.raw = raw
	return b.decodeRaw(m)
}

// decodeRaw decodes the uncompressed body in b.raw and checks it against
// its key.
func (b *decodedBlock) decodeRaw(m blockMeta) error {
	if err := b.decode(m.first, b.raw); err != nil {
		return err
	}
	if len(b.recs) != int(m.count) {
		return fmt.Errorf("%w: %d events, key says %d", errCorrupt, len(b.recs), m.count)
	}
	return nil
}

// corruptEvent is what the dead-letter store keeps of a block it could
// not decode: where it was and why, since its events are unreadable.
type corruptEvent struct {
	FirstSeq   uint64 `json:"first_seq"`
	Events     uint32 `json:"events"`
	Generation string `json:"generation"` // the directory, for whoever looks at the damage
}

// quarantine moves a block that fails its checksum or decoding to the
// dead-letter store, so delivery goes on with the next one instead of
// failing on it forever. The block stays where it is, in a generation
// that is read-only by then; a 'q' key in the meta store says to skip it.
func (s *Spool) quarantine(g *generation, m blockMeta, cause error) error {
	s.quarantineMu.Lock()
	defer s.quarantineMu.Unlock()
	if s.quarantined[m.first] {
		return nil // another consumer quarantined it first
	}
	ev, _ := json.Marshal(corruptEvent{FirstSeq: m.first, Events: m.count, Generation: filepath.Base(g.dir)})
	dl := DeadLetter{Reason: ReasonCorrupt, Error: cause.Error(), Event: ev}
	if err := s.DeadLetter(context.Background(), []DeadLetter{dl}); err != nil {
		return fmt.Errorf("quarantine block %d: %w", m.first, err)
	}
	// The mark after the dead letter: a crash between the two finds the
	// block damaged again at the next start and dead-letters it twice,
	// where the other order could lose the only record of the damage.
	err := s.meta.Update(func(txn *badger.Txn) error { return txn.Set(quarantineKey(m.first), nil) })
	if err != nil {
		return fmt.Errorf("quarantine block %d: %w", m.first, err)
	}
	s.quarantined[m.first] = true
	g.mu.Lock()
	g.blocks--
	g.mu.Unlock()
	s.metrics.corrupt.Inc()
	s.metrics.blocks.Dec()
	s.log.Error("quarantined corrupt block", "generation", filepath.Base(g.dir), "first_seq", m.first, "events", m.count, "err", cause)
	return nil
}

func (s *Spool) isQuarantined(first uint64) bool {
	s.quarantineMu.Lock()
	defer s.quarantineMu.Unlock()
	return s.quarantined[first]
}

func (s *Spool) loadQuarantined() error {
	s.quarantined = map[uint64]bool{}
	return s.meta.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixQuarantine}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if k := it.Item().Key(); len(k) == 9 {
				s.quarantined[binary.BigEndian.Uint64(k[1:])] = true
			}
		}
		return nil
	})
}

// cursorSaveEvery is how often acknowledged cursors are written to disk.
// A crash re-delivers at most this much more than the in-flight window:
// at-least-once either way, and one fsync per interval instead of one per
// delivered batch.
const cursorSaveEvery = 100 * time.Millisecond

// Ack records that every event below upTo is done for consumer. It is
// saved to disk within cursorSaveEvery, and at Close.
func (s *Spool) Ack(consumer string, upTo uint64) error {
	c, err := s.consumer(consumer)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if upTo <= c.cursor.Load() {
		return nil
	}
	c.cursor.Store(upTo)
	c.pos = max(c.pos, upTo)
	select { // the maintenance loop saves it and reclaims what it passed
	case s.acked <- struct{}{}:
	default:
	}
	return nil
}

// saveCursors writes every cursor that moved since it was last saved.
// While the spool runs, each read mark stays the lease ReadInto wrote;
// the last save, at Close, writes where each consumer's reading stopped.
func (s *Spool) saveCursors(final bool) error {
	type dirty struct {
		c         *consumer
		cur, read uint64
	}
	var moved []dirty
	for _, c := range s.consumers {
		cur := c.cursor.Load()
		read := c.savedRead.Load()
		if final {
			c.mu.Lock()
			read = c.pos
			c.mu.Unlock()
		}
		if cur != c.saved.Load() || read != c.savedRead.Load() {
			moved = append(moved, dirty{c, cur, read})
		}
	}
	if len(moved) == 0 {
		return nil
	}
	err := s.meta.Update(func(txn *badger.Txn) error {
		for _, d := range moved {
			if err := txn.Set(cursorKey(d.c.name), binary.BigEndian.AppendUint64(nil, d.cur)); err != nil {
				return err
			}
			if err := txn.Set(readMarkKey(d.c.name), binary.BigEndian.AppendUint64(nil, d.read)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("save cursors: %w", err)
	}
	s.noteUnsynced()
	for _, d := range moved {
		d.c.saved.Store(d.cur)
		d.c.savedRead.Store(d.read)
	}
	return nil
}

// Rewind moves the consumer's read position back to its cursor, so that
// what was read but never acknowledged is read again.
func (s *Spool) Rewind(consumer string) error {
	c, err := s.consumer(consumer)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.pos = c.cursor.Load()
	c.cur = nil
	c.mu.Unlock()
	return nil
}

// Position returns the consumer's read position: the sequence number the
// next Read starts from. Once everything read is done, acknowledging it
// also covers events Read skipped because they were meant for another
// consumer.
func (s *Spool) Position(consumer string) uint64 {
	c, err := s.consumer(consumer)
	if err != nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pos
}

// Cursor returns consumer's cursor: every event below it is done.
func (s *Spool) Cursor(consumer string) (uint64, error) {
	c, err := s.consumer(consumer)
	if err != nil {
		return 0, err
	}
	return c.cursor.Load(), nil
}
