package spool

import (
	"bytes"
	"cmp"
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
// Badger's limit (15% of meta's 512 KiB memtable), so that each transaction
// holds whole blocks and the count that goes with them.
const deadTxnBytes = 64 << 10

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
func sealDeadBlocks(dead []DeadLetter) []deadBlock {
	var blocks []deadBlock
	raw := make([]byte, 0, deadBlockRawBytes+maxDeadLetterOverhead)
	first, count := uint64(0), 0
	flush := func() {
		if count > 0 {
			blocks = append(blocks, deadBlock{first: first, count: count, val: sealBlock(raw)})
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
		raw = appendDeadLetter(raw, &dead[i])
		count++
	}
	flush()
	return blocks
}

// appendDeadLetter appends a dead letter as a block holds it: its numbers,
// then its strings and its event, each after its length. Binary rather
// than JSON: encoding/json spent more time checking each event's JSON
// than the rest of storing it cost.
func appendDeadLetter(dst []byte, d *DeadLetter) []byte {
	dst = binary.AppendUvarint(dst, d.ID)
	dst = binary.AppendVarint(dst, d.At.UnixNano())
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

// storeDeadLetters numbers dead letters and stores them, with marker (if
// any) set in the same transaction as the first of them.
func (s *Spool) storeDeadLetters(dead []DeadLetter, at time.Time, marker []byte) error {
	return s.commitDeadLetters(s.sealDeadLetters(dead, at), marker)
}

// sealDeadLetters numbers dead letters, dates those that have no date yet
// and seals them into blocks.
func (s *Spool) sealDeadLetters(dead []DeadLetter, at time.Time) []deadBlock {
	firstID := s.nextDead.Add(uint64(len(dead))) - uint64(len(dead))
	for i := range dead {
		dead[i].ID = firstID + uint64(i)
		if dead[i].At.IsZero() {
			dead[i].At = at
		}
	}
	return sealDeadBlocks(dead)
}

// commitDeadLetters stores sealed dead letters, with marker (if any).
func (s *Spool) commitDeadLetters(blocks []deadBlock, marker []byte) error {
	s.deadMu.Lock()
	defer s.deadMu.Unlock()
	if err := s.writeDeadBlocks(blocks, marker, nil); err != nil {
		return s.writeError(err)
	}
	s.noteMetaWrite()
	return nil
}

// writeDeadBlocks stores, replaces or deletes (a nil val) dead-letter
// blocks, and deletes the legacy keys given, keeping the stored count
// exact in every transaction: a crash between two of them leaves a count
// that matches the blocks. The caller holds deadMu.
func (s *Spool) writeDeadBlocks(blocks []deadBlock, marker []byte, legacy [][]byte) (err error) {
	count := s.deadCount
	txn := s.meta.NewTransaction(true)
	size, pending := 0, false
	// The transactions are handed to Badger without waiting for each:
	// its writer applies them in order and syncs what is pending at once,
	// so a group's dead letters cost one fsync, not one per transaction.
	var sent []deadCommit
	defer func() {
		txn.Discard()
		err = s.awaitDeadCommits(sent, err)
	}()
	commit := func() error {
		if !pending {
			return nil
		}
		if err := txn.Set(deadCountKey, binary.BigEndian.AppendUint64(nil, count)); err != nil {
			return err
		}
		done := make(chan error, 1)
		txn.CommitWith(func(err error) { done <- err })
		sent = append(sent, deadCommit{count, done})
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

// deadCommit is a dead-letter transaction handed to Badger: the count it
// stores, and its outcome.
type deadCommit struct {
	count uint64
	done  chan error
}

// awaitDeadCommits waits for the transactions sent, in order, and keeps
// the count of the last one durable before a failure: in order, a crash
// too leaves the count of the last durable one, which matches the blocks
// durable with it. It returns err, or else the first failure.
func (s *Spool) awaitDeadCommits(sent []deadCommit, err error) error {
	failed := err != nil
	for _, c := range sent {
		if cerr := <-c.done; cerr != nil {
			failed = true
			err = cmp.Or(err, cerr)
		} else if !failed {
			s.deadCount = c.count
		}
	}
	if failed && len(sent) > 1 {
		// A transaction after a failed one may have been applied, its
		// count including blocks that are not there: count again.
		if rerr := s.recountDeadLetters(true); rerr != nil {
			s.log.Error("recount dead letters", "err", rerr)
		}
	}
	s.metrics.deadLetters.Set(float64(s.deadCount))
	return err
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
				resealed := sealDeadBlocks(kept)
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
			err = s.recountDeadLetters(false)
		}
		s.releaseTablePages()
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
		blocks := sealDeadBlocks(dead)
		s.nextDead.Store(max(s.nextDead.Load(), dead[len(dead)-1].ID+1))
		// One transaction: each legacy key goes with the block that now
		// holds it. Their sizes are the same order, so this fits.
		if err := s.writeDeadBlocks(blocks, nil, keys); err != nil {
			return fmt.Errorf("move dead letters into blocks: %w", err)
		}
	}
}

// recountDeadLetters counts the stored dead letters and stores the count;
// a count of zero only if stored is set (a count is stored, which may be
// wrong).
func (s *Spool) recountDeadLetters(stored bool) error {
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
	if n == 0 && !stored {
		// No count and no dead letters reads as zero again at the next
		// open, and the first dead letters store their count with them:
		// a commit here would cost every start on a new spool an fsync.
		return nil
	}
	err = s.meta.Update(func(txn *badger.Txn) error {
		return txn.Set(deadCountKey, binary.BigEndian.AppendUint64(nil, n))
	})
	if err != nil {
		return fmt.Errorf("store dead-letter count: %w", err)
	}
	return nil
}
