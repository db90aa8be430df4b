package spool

import (
	"encoding/binary"
	"time"
)

// Key prefixes. See FORMAT.md.
const (
	prefixBlock  = 'b' // 'b' | first seq (8) | count (4) | stored unix millis (8)
	prefixCursor = 'c' // 'c' | consumer name -> next seq to deliver (8)
	// 'r' | consumer name -> next seq to read (8): what the consumer had
	// read, acknowledged or not, when its cursor was last saved.
	prefixReadMark = 'r'
	// 'D' | first id (8) -> a block of dead letters (deadstore.go).
	prefixDeadBlock = 'D'
	// 'n' -> the number of dead letters stored (8), kept with the blocks.
	prefixDeadCount = 'n'
	// 'd' | id (8) -> one dead letter as JSON: spools written before
	// dead-letter blocks; moved into blocks when opened.
	prefixLegacyDead = 'd'
	// 'q' | first seq (8): a quarantined block, skipped by readers. Meta store.
	prefixQuarantine = 'q'
	// 'l' | consumer length (2) | consumer | write key length (2) | write
	// key | seq (8) | stored unix ms (8) -> a parked event's JSON, in the
	// consumer's lane for that key (lanes.go). Meta store.
	prefixLane = 'l'
)

const blockKeyLen = 1 + 8 + 4 + 8

// blockKey carries everything reclamation and backlog accounting need, so
// they iterate keys only and never read a block's value.
func blockKey(first uint64, count uint32, stored time.Time) []byte {
	k := make([]byte, blockKeyLen)
	k[0] = prefixBlock
	binary.BigEndian.PutUint64(k[1:], first)
	binary.BigEndian.PutUint32(k[9:], count)
	binary.BigEndian.PutUint64(k[13:], uint64(stored.UnixMilli()))
	return k
}

type blockMeta struct {
	first  uint64
	count  uint32
	stored time.Time
}

func (m blockMeta) end() uint64 { return m.first + uint64(m.count) }

func parseBlockKey(k []byte) (blockMeta, bool) {
	if len(k) != blockKeyLen || k[0] != prefixBlock {
		return blockMeta{}, false
	}
	return blockMeta{
		first:  binary.BigEndian.Uint64(k[1:]),
		count:  binary.BigEndian.Uint32(k[9:]),
		stored: time.UnixMilli(int64(binary.BigEndian.Uint64(k[13:]))),
	}, true
}

// seekBlockKey sorts after every block key whose first seq is <= seq, so a
// reverse iterator seeking it lands on the block that may hold seq.
func seekBlockKey(seq uint64) []byte {
	k := make([]byte, blockKeyLen)
	k[0] = prefixBlock
	binary.BigEndian.PutUint64(k[1:], seq)
	for i := 9; i < blockKeyLen; i++ {
		k[i] = 0xff
	}
	return k
}

func cursorKey(consumer string) []byte { return append([]byte{prefixCursor}, consumer...) }

func readMarkKey(consumer string) []byte { return append([]byte{prefixReadMark}, consumer...) }

func quarantineKey(first uint64) []byte {
	k := make([]byte, 9)
	k[0] = prefixQuarantine
	binary.BigEndian.PutUint64(k[1:], first)
	return k
}
