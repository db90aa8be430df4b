package spool

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// Dead letters are stored in blocks, compressed and checksummed like event
// blocks, with their count kept beside them. Stored one key each, a
// tracking plan blocking half of 20 k events/s made the meta database's
// compactions take most of the CPU (W1 fell to 5 k events/s), and every
// byte written stayed resident in the mmapped tables; counting them at
// start-up read the whole store back into memory.

// deadBlockRawBytes bounds a dead-letter block before compression, so
// that a sealed one stays below meta's value threshold (64 KiB): kept in
// the LSM tree, a deleted block's space comes back with compaction.
const deadBlockRawBytes = 60 << 10

// deadTxnBytes bounds the blocks of one meta transaction, well inside
// Badger's limit (15% of meta's 1 MiB memtable), so that each transaction
// holds whole blocks and the count that goes with them.
const deadTxnBytes = 100 << 10

func deadBlockKey(first uint64) []byte {
	k := make([]byte, 9)
	k[0] = prefixDeadBlock
	binary.BigEndian.PutUint64(k[1:], first)
	return k
}

var deadCountKey = []byte{prefixDeadCount}

// deadBlock is a block of dead letters as stored: its key's first id and
// its sealed value.
type deadBlock struct {
	first uint64
	count int
	val   []byte // nil: the block is deleted
}

// sealDeadBlocks encodes dead letters, in id order, into blocks of about
// deadBlockRawBytes each.
func sealDeadBlocks(dead []DeadLetter) ([]deadBlock, error) {
	var blocks []deadBlock
	var raw []byte
	first, count := uint64(0), 0
	flush := func() {
		if count > 0 {
			blocks = append(blocks, deadBlock{first: first, count: count, val: sealBlock(raw)})
		}
		raw, count = raw[:0], 0
	}
	for i := range dead {
		v, err := json.Marshal(&dead[i])
		if err != nil {
			return nil, fmt.Errorf("encode dead letter: %w", err)
		}
		if count > 0 && len(raw)+len(v) > deadBlockRawBytes {
			flush()
		}
		if count == 0 {
			first = dead[i].ID
		}
		raw = binary.AppendUvarint(raw, uint64(len(v)))
		raw = append(raw, v...)
		count++
	}
	flush()
	return blocks, nil
}

// openDeadBlock decodes a stored block of dead letters.
func openDeadBlock(val []byte) ([]DeadLetter, error) {
	raw, err := openBlock(val)
	if err != nil {
		return nil, err
	}
	var dead []DeadLetter
	for len(raw) > 0 {
		var v []byte
		v, raw, err = readField(raw)
		if err != nil {
			return nil, err
		}
		var d DeadLetter
		if err := json.Unmarshal(v, &d); err != nil {
			return nil, fmt.Errorf("%w: dead letter: %v", errCorrupt, err)
		}
		dead = append(dead, d)
	}
	return dead, nil
}

// storeDeadLetters numbers dead letters and stores them, with marker (if
// any) set in the same transaction as the first of them.
func (s *Spool) storeDeadLetters(dead []DeadLetter, at time.Time, marker []byte) error {
	firstID := s.nextDead.Add(uint64(len(dead))) - uint64(len(dead))
	for i := range dead {
		dead[i].ID = firstID + uint64(i)
		if dead[i].At.IsZero() {
			dead[i].At = at
		}
	}
	blocks, err := sealDeadBlocks(dead)
	if err != nil {
		return err
	}
	s.deadMu.Lock()
	defer s.deadMu.Unlock()
	if err := s.writeDeadBlocks(blocks, marker, nil); err != nil {
		return s.writeError(err)
	}
	return nil
}

// writeDeadBlocks stores, replaces or deletes (a nil val) dead-letter
// blocks, and deletes the legacy keys given, keeping the stored count
// exact in every transaction: a crash between two of them leaves a count
// that matches the blocks. The caller holds deadMu.
func (s *Spool) writeDeadBlocks(blocks []deadBlock, marker []byte, legacy [][]byte) error {
	count := s.deadCount
	txn := s.meta.NewTransaction(true)
	defer func() { txn.Discard() }()
	size, pending := 0, false
	commit := func() error {
		if !pending {
			return nil
		}
		if err := txn.Set(deadCountKey, binary.BigEndian.AppendUint64(nil, count)); err != nil {
			return err
		}
		if err := txn.Commit(); err != nil {
			return err
		}
		s.metrics.deadLetters.Set(float64(count))
		s.deadCount = count
		txn = s.meta.NewTransaction(true)
		size, pending = 0, false
		return nil
	}
	if marker != nil {
		if err := txn.Set(marker, nil); err != nil {
			return err
		}
		pending = true
	}
	for _, k := range legacy {
		if err := txn.Delete(k); err != nil {
			return err
		}
		pending = true
	}
	for _, b := range blocks {
		if size > 0 && size+len(b.val) > deadTxnBytes {
			if err := commit(); err != nil {
				return err
			}
		}
		var err error
		if b.val == nil {
			err = txn.Delete(deadBlockKey(b.first))
		} else {
			err = txn.Set(deadBlockKey(b.first), b.val)
		}
		if err != nil {
			return err
		}
		count = uint64(int64(count) + int64(b.count))
		size += len(b.val)
		pending = true
	}
	return commit()
}

// deleteDead removes the dead letters of dls that keep selects, rewriting
// the blocks that hold them.
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
	s.deadMu.Lock()
	defer s.deadMu.Unlock()
	var changed []deadBlock
	err := s.meta.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixDeadBlock}, Reverse: true})
		defer it.Close()
		for len(ids) > 0 {
			it.Seek(deadBlockKey(ids[0]))
			if !it.Valid() {
				ids = ids[1:] // already gone
				continue
			}
			first := binary.BigEndian.Uint64(it.Item().Key()[1:])
			var dead []DeadLetter
			err := it.Item().Value(func(v []byte) (err error) {
				dead, err = openDeadBlock(v)
				return err
			})
			if err != nil {
				return fmt.Errorf("dead-letter block %d: %w", first, err)
			}
			last := first
			if len(dead) > 0 {
				last = dead[len(dead)-1].ID
			}
			inBlock := 0
			for inBlock < len(ids) && ids[inBlock] <= last {
				inBlock++
			}
			if inBlock == 0 {
				ids = ids[1:] // between blocks: already gone
				continue
			}
			gone := ids[:inBlock]
			ids = ids[inBlock:]
			kept := slices.DeleteFunc(slices.Clone(dead), func(d DeadLetter) bool {
				_, found := slices.BinarySearch(gone, d.ID)
				return found
			})
			if len(kept) == len(dead) {
				continue
			}
			b := deadBlock{first: first, count: len(kept) - len(dead)}
			if len(kept) > 0 {
				resealed, err := sealDeadBlocks(kept)
				if err != nil {
					return err
				}
				// Kept under the block's first id, whatever was removed
				// from its beginning, so the key names one block only.
				b.val = resealed[0].val
			}
			changed = append(changed, b)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete dead letters: %w", err)
	}
	if err := s.writeDeadBlocks(changed, nil, nil); err != nil {
		return fmt.Errorf("delete dead letters: %w", err)
	}
	if s.cfg.Sync == SyncAlways {
		if err := s.meta.Sync(); err != nil {
			return fmt.Errorf("sync dead letter deletes: %w", err)
		}
	}
	return nil
}

// openDeadLetters reads the stored count and where numbering resumes. A
// spool written before dead letters were kept in blocks holds one 'd' key
// each and no count: they are moved into blocks, ids kept, and counted
// once.
func (s *Spool) openDeadLetters() error {
	s.deadMu.Lock()
	defer s.deadMu.Unlock()
	counted := false
	err := s.meta.View(func(txn *badger.Txn) error {
		if item, err := txn.Get(deadCountKey); err == nil {
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			if len(v) != 8 {
				return fmt.Errorf("dead-letter count: %d bytes, want 8", len(v))
			}
			s.deadCount, counted = binary.BigEndian.Uint64(v), true
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixDeadBlock}, Reverse: true})
		defer it.Close()
		it.Seek(deadBlockKey(^uint64(0)))
		if !it.Valid() {
			return nil
		}
		return it.Item().Value(func(v []byte) error {
			dead, err := openDeadBlock(v)
			if err != nil {
				return fmt.Errorf("dead-letter block %d: %w", binary.BigEndian.Uint64(it.Item().Key()[1:]), err)
			}
			if len(dead) > 0 {
				s.nextDead.Store(dead[len(dead)-1].ID + 1)
			}
			return nil
		})
	})
	if err == nil && !counted {
		err = s.migrateLegacyDeadLetters()
		if err == nil {
			err = s.recountDeadLetters()
		}
	}
	s.metrics.deadLetters.Set(float64(s.deadCount))
	return err
}

// migrateLegacyDeadLetters moves 'd' keys into blocks, a transaction's
// worth at a time: a crash in between leaves no count, and the next open
// goes on.
func (s *Spool) migrateLegacyDeadLetters() error {
	for {
		var dead []DeadLetter
		var keys [][]byte
		size := 0
		err := s.meta.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixLegacyDead}})
			defer it.Close()
			for it.Rewind(); it.Valid() && size < deadTxnBytes; it.Next() {
				var d DeadLetter
				err := it.Item().Value(func(v []byte) error {
					size += len(v)
					return json.Unmarshal(v, &d)
				})
				if err != nil {
					return fmt.Errorf("decode dead letter %x: %w", it.Item().Key(), err)
				}
				d.ID = binary.BigEndian.Uint64(it.Item().Key()[1:])
				dead = append(dead, d)
				keys = append(keys, it.Item().KeyCopy(nil))
			}
			return nil
		})
		if err != nil || len(dead) == 0 {
			return err
		}
		blocks, err := sealDeadBlocks(dead)
		if err != nil {
			return err
		}
		s.nextDead.Store(max(s.nextDead.Load(), dead[len(dead)-1].ID+1))
		// One transaction: each legacy key goes with the block that now
		// holds it. Their sizes are the same order, so this fits.
		if err := s.writeDeadBlocks(blocks, nil, keys); err != nil {
			return fmt.Errorf("move dead letters into blocks: %w", err)
		}
	}
}

// recountDeadLetters counts the stored dead letters and stores the count.
func (s *Spool) recountDeadLetters() error {
	var n uint64
	err := s.meta.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixDeadBlock}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			err := it.Item().Value(func(v []byte) error {
				dead, err := openDeadBlock(v)
				n += uint64(len(dead))
				return err
			})
			if err != nil {
				return fmt.Errorf("dead-letter block %d: %w", binary.BigEndian.Uint64(it.Item().Key()[1:]), err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.deadCount = n
	err = s.meta.Update(func(txn *badger.Txn) error {
		return txn.Set(deadCountKey, binary.BigEndian.AppendUint64(nil, n))
	})
	if err != nil {
		return fmt.Errorf("store dead-letter count: %w", err)
	}
	return nil
}
