package spool

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// Dead letters are stored in blocks, compressed and checksummed like event
// blocks, in the segments of deadlog.go. Stored one at a time, encoded as
// JSON, a tracking plan blocking half of 20 k events/s spent more on
// storing them than on the events.

// deadBlockRawBytes bounds a dead-letter block before compression, as
// maxBlockBytes bounds an event block: a group's dead letters are one
// block most of the time, built in one buffer (deadBuffers). A walk
// that starts inside a block, or a deletion of one letter, decodes it
// whole, a few milliseconds.
const deadBlockRawBytes = maxBlockBytes

// deadCountKey is where spools before the store's own files kept the
// number of dead letters in meta.
var deadCountKey = []byte{prefixDeadCount}

// deadBlock is a block of dead letters as stored: its first and last ids,
// how many it holds, and its sealed value.
type deadBlock struct {
	first, last uint64
	count       int
	val         []byte
}

// sealDeadBlocks encodes dead letters, in id order, into blocks of about
// deadBlockRawBytes each.
func sealDeadBlocks(dead []DeadLetter) []deadBlock {
	var blocks []deadBlock
	raw := make([]byte, 0, deadBlockRawBytes+maxDeadLetterOverhead)
	first, last, count := uint64(0), uint64(0), 0
	flush := func() {
		if count > 0 {
			blocks = append(blocks, deadBlock{first: first, last: last, count: count, val: sealBlock(raw)})
		}
		raw, count = raw[:0], 0
	}
	for i := range dead {
		if count > 0 && len(raw)+deadLetterSize(&dead[i]) > deadBlockRawBytes {
			flush()
		}
		if count == 0 {
			first = dead[i].ID
		}
		raw = appendDeadLetter(raw, &dead[i], dead[i].ID, dead[i].At)
		last = dead[i].ID
		count++
	}
	flush()
	return blocks
}

// appendDeadLetter appends a dead letter as a block holds it, numbered id
// and dated at: its numbers, then its strings and its event, each after
// its length. Binary rather than JSON: encoding/json spent more time
// checking each event's JSON than the rest of storing it cost.
func appendDeadLetter(dst []byte, d *DeadLetter, id uint64, at time.Time) []byte {
	dst = binary.AppendUvarint(dst, id)
	dst = binary.AppendVarint(dst, at.UnixNano())
	dst = binary.AppendUvarint(dst, uint64(d.Status))
	dst = binary.AppendUvarint(dst, uint64(d.Attempts))
	dst = binary.AppendUvarint(dst, uint64(d.Size))
	for _, f := range [...]string{d.Destination, d.Reason, d.Error, d.WriteKey} {
		dst = binary.AppendUvarint(dst, uint64(len(f)))
		dst = append(dst, f...)
	}
	for _, f := range [...][]byte{d.Event, d.Violations} {
		dst = binary.AppendUvarint(dst, uint64(len(f)))
		dst = append(dst, f...)
	}
	return dst
}

// maxDeadLetterOverhead bounds what appendDeadLetter adds to a dead
// letter's strings and event: five numbers and six lengths.
const maxDeadLetterOverhead = 11 * binary.MaxVarintLen64

// deadLetterSize bounds what appendDeadLetter appends.
func deadLetterSize(d *DeadLetter) int {
	return maxDeadLetterOverhead + len(d.Destination) + len(d.Reason) + len(d.Error) + len(d.WriteKey) + len(d.Event) + len(d.Violations)
}

// readDeadLetter decodes what appendDeadLetter appended, returning the
// rest. The dead letter's slices are its own copies.
func readDeadLetter(p []byte) (DeadLetter, []byte, error) {
	var d DeadLetter
	var nums [5]uint64
	for i := range nums {
		var n int
		if i == 1 {
			var v int64
			v, n = binary.Varint(p)
			nums[i] = uint64(v)
		} else {
			nums[i], n = binary.Uvarint(p)
		}
		if n <= 0 {
			return d, nil, fmt.Errorf("%w: dead letter: bad number", errCorrupt)
		}
		p = p[n:]
	}
	d.ID, d.At = nums[0], time.Unix(0, int64(nums[1])).UTC()
	d.Status, d.Attempts, d.Size = int(nums[2]), int(nums[3]), int(nums[4])
	var fields [6][]byte
	for i := range fields {
		var err error
		if fields[i], p, err = readField(p); err != nil {
			return d, nil, err
		}
	}
	d.Destination, d.Reason, d.Error, d.WriteKey = string(fields[0]), string(fields[1]), string(fields[2]), string(fields[3])
	if len(fields[4]) > 0 {
		d.Event = bytes.Clone(fields[4])
	}
	if len(fields[5]) > 0 {
		d.Violations = bytes.Clone(fields[5])
	}
	return d, p, nil
}

// openDeadBlock decodes a stored block of dead letters.
func openDeadBlock(val []byte) ([]DeadLetter, error) {
	raw, err := openBlock(val)
	if err != nil {
		return nil, err
	}
	var dead []DeadLetter
	for len(raw) > 0 {
		var d DeadLetter
		if d, raw, err = readDeadLetter(raw); err != nil {
			return nil, err
		}
		dead = append(dead, d)
	}
	return dead, nil
}

// commitDeadLetters stores sealed dead letters, durable per Config.Sync.
func (s *Spool) commitDeadLetters(blocks []deadBlock) error {
	if err := s.changeDead(func(l *deadLog) error { return l.append(blocks) }); err != nil {
		return s.writeError(err)
	}
	s.noteDeadWrite()
	return nil
}

// changeDead runs change on the dead-letter store under deadMu, then
// publishes the count and, under SyncInterval, has the write synced.
func (s *Spool) changeDead(change func(*deadLog) error) error {
	s.deadMu.Lock()
	err := change(s.dead)
	live := s.dead.live
	s.deadMu.Unlock()
	s.metrics.deadLetters.Set(float64(live))
	if s.cfg.Sync == SyncInterval {
		s.noteUnsynced()
	}
	return err
}

// deleteDead removes the dead letters of dls that keep selects.
func (s *Spool) deleteDead(dls []DeadLetter, keep func(DeadLetter) bool) error {
	var ids []uint64
	for _, d := range dls {
		if keep(d) {
			ids = append(ids, d.ID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	slices.Sort(ids)
	if err := s.changeDead(func(l *deadLog) error { return l.remove(slices.Compact(ids)) }); err != nil {
		return fmt.Errorf("delete dead letters: %w", err)
	}
	return nil
}

// openDeadLetters opens the dead-letter store and sets where numbering
// resumes.
func (s *Spool) openDeadLetters() error {
	s.deadMu.Lock()
	defer s.deadMu.Unlock()
	l, err := openDeadLog(s.cfg.Dir, s.cfg.Sync == SyncAlways, s.log)
	if err != nil {
		return err
	}
	s.dead = l
	if err := s.moveDeadLettersOutOfMeta(); err != nil {
		return fmt.Errorf("move dead letters out of meta: %w", err)
	}
	s.nextDead.Store(l.nextID())
	s.metrics.deadLetters.Set(float64(l.live))
	return nil
}

// moveDeadLettersOutOfMeta moves the dead letters that spools written
// before the store had files of its own kept in meta (in blocks under
// 'D', their count under 'n'; before that, one JSON value under 'd'
// each) into segments, ids kept, and then deletes them from meta. A crash
// in between leaves them in both: the next open skips what a segment
// holds already. s.deadMu is held.
func (s *Spool) moveDeadLettersOutOfMeta() error {
	var keys [][]byte
	var legacy []DeadLetter
	var blocks []deadBlock
	size := 0
	flush := func() error {
		blocks = append(blocks, sealDeadBlocks(legacy)...)
		err := s.dead.append(blocks)
		legacy, blocks, size = nil, nil, 0
		return err
	}
	err := s.meta.View(func(txn *badger.Txn) error {
		for _, prefix := range []byte{prefixLegacyDead, prefixDeadBlock} {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefix}})
			for it.Rewind(); it.Valid(); it.Next() {
				key := it.Item().KeyCopy(nil)
				keys = append(keys, key)
				if len(key) != 9 || s.dead.covers(binary.BigEndian.Uint64(key[1:])) {
					continue
				}
				err := it.Item().Value(func(v []byte) error {
					size += len(v)
					if prefix == prefixLegacyDead {
						var d DeadLetter
						if err := json.Unmarshal(v, &d); err != nil {
							return err
						}
						d.ID = binary.BigEndian.Uint64(key[1:])
						legacy = append(legacy, d)
						return nil
					}
					dead, err := openDeadBlock(v)
					if err != nil || len(dead) == 0 {
						return err
					}
					blocks = append(blocks, deadBlock{first: dead[0].ID, last: dead[len(dead)-1].ID, count: len(dead), val: bytes.Clone(v)})
					return nil
				})
				if err == nil && size >= deadSegmentBytes {
					err = flush()
				}
				if err != nil {
					it.Close()
					return fmt.Errorf("dead letter %x: %w", key, err)
				}
			}
			it.Close()
		}
		return flush()
	})
	if err != nil || len(keys) == 0 {
		return err
	}
	if err := s.dead.sync(); err != nil {
		return err
	}
	wb := s.meta.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range append(keys, deadCountKey) {
		if err := wb.Delete(k); err != nil {
			return err
		}
	}
	if err := wb.Flush(); err != nil {
		return err
	}
	s.log.Info("moved dead letters out of meta into their own store", "keys", len(keys))
	return nil
}
