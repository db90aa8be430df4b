package spool

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// Read returns up to maxEvents records (and about maxBytes of Data, always
// at least one record when any is there) past the consumer's read position,
// and advances that position. It never blocks: an empty result means
// nothing new, and Changed tells when there is.
func (s *Spool) Read(consumer string, maxEvents, maxBytes int) ([]Record, error) {
	c, err := s.consumer(consumer)
	if err != nil {
		return nil, err
	}
	if s.closing.Load() {
		return nil, ErrClosed
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s.mu.Lock()
	next := s.next
	s.mu.Unlock()

	var out []Record
	bytes := 0
	for c.pos < next && len(out) < maxEvents && (bytes < maxBytes || len(out) == 0) {
		b, err := s.blockFor(c, c.pos)
		if err != nil {
			return out, err
		}
		if b == nil { // nothing stored at or after pos: a reclaimed or quarantined tail
			c.pos = next
			break
		}
		c.cur = b
		c.pos = max(c.pos, b.first)
		for i := int(c.pos - b.first); i < len(b.recs); i++ {
			if len(out) >= maxEvents || (bytes >= maxBytes && len(out) > 0) {
				break
			}
			c.pos++
			if d := b.dests[i]; d != "" && d != c.name {
				continue
			}
			out = append(out, b.recs[i])
			bytes += len(b.recs[i].Data)
		}
	}
	return out, nil
}

// blockFor returns the block holding seq or, when that is gone, the next
// one after it; nil when there is none.
func (s *Spool) blockFor(c *consumer, seq uint64) (*decodedBlock, error) {
	if b := c.cur; b != nil && b.first <= seq && seq < b.first+uint64(len(b.recs)) {
		return b, nil
	}
	s.mu.Lock()
	if i := s.recentIndex(seq); i >= 0 {
		b := s.recent[i]
		s.mu.Unlock()
		return b, nil
	}
	s.mu.Unlock()
	for {
		m, ok := s.blockAtOrAfter(seq)
		if !ok {
			return nil, nil
		}
		b, err := s.loadBlock(m)
		if err == nil {
			return b, nil
		}
		if !errors.Is(err, errCorrupt) {
			return nil, err
		}
		if err := s.quarantine(m, err); err != nil {
			return nil, err
		}
		seq = m.end()
	}
}

func (s *Spool) loadBlock(m blockMeta) (*decodedBlock, error) {
	var val []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(blockKey(m.first, m.count, m.stored))
		if err != nil {
			return err
		}
		val, err = item.ValueCopy(nil)
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		// Reclaimed or quarantined between the lookup and now.
		return &decodedBlock{first: m.first, stored: m.stored}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read block %d: %w", m.first, err)
	}
	body, err := openBlock(val)
	if err != nil {
		return nil, err
	}
	b, err := decodeBody(m.first, body)
	if err != nil {
		return nil, err
	}
	if len(b.recs) != int(m.count) {
		return nil, fmt.Errorf("%w: %d events, key says %d", errCorrupt, len(b.recs), m.count)
	}
	return b, nil
}

// corruptEvent is what the dead-letter store keeps of a block it could
// not decode: where it was and why, since its events are unreadable.
type corruptEvent struct {
	FirstSeq uint64 `json:"first_seq"`
	Events   uint32 `json:"events"`
}

// quarantine moves a block that fails its checksum or decoding to the
// dead-letter store, so delivery goes on with the next one instead of
// failing on it forever.
func (s *Spool) quarantine(m blockMeta, cause error) error {
	s.quarantineMu.Lock()
	defer s.quarantineMu.Unlock()
	key := blockKey(m.first, m.count, m.stored)
	ev, _ := json.Marshal(corruptEvent{FirstSeq: m.first, Events: m.count})
	err := s.db.Update(func(txn *badger.Txn) error {
		if _, err := txn.Get(key); errors.Is(err, badger.ErrKeyNotFound) {
			return nil // another consumer quarantined it first
		}
		id := s.nextDead.Add(1) - 1
		dl := DeadLetter{ID: id, Reason: ReasonCorrupt, Error: cause.Error(), At: time.Now(), Event: ev}
		v, err := json.Marshal(&dl)
		if err != nil {
			return err
		}
		if err := txn.Set(deadKey(id), v); err != nil {
			return err
		}
		s.metrics.corrupt.Inc()
		s.metrics.blocks.Dec()
		s.log.Error("quarantined corrupt block", "first_seq", m.first, "events", m.count, "err", cause)
		return txn.Delete(key)
	})
	if err != nil {
		return fmt.Errorf("quarantine block %d: %w", m.first, err)
	}
	return nil
}

// Ack durably records that every event below upTo is done for consumer.
func (s *Spool) Ack(consumer string, upTo uint64) error {
	c, err := s.consumer(consumer)
	if err != nil {
		return err
	}
	if s.closing.Load() && s.db.IsClosed() {
		return ErrClosed
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if upTo <= c.cursor.Load() {
		return nil
	}
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], upTo)
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(cursorKey(consumer), v[:]) }); err != nil {
		return fmt.Errorf("save cursor %s: %w", consumer, err)
	}
	c.cursor.Store(upTo)
	c.pos = max(c.pos, upTo)
	return nil
}

// Rewind moves the consumer's read position back to its durable cursor,
// so that what was read but never acknowledged is read again.
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

// Cursor returns consumer's durable cursor: every event below it is done.
func (s *Spool) Cursor(consumer string) (uint64, error) {
	c, err := s.consumer(consumer)
	if err != nil {
		return 0, err
	}
	return c.cursor.Load(), nil
}
