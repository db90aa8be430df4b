package spool

import (
	"bytes"
	_ "embed"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"runtime"
	"time"

	"github.com/klauspost/compress/zstd"
)

// maxBlockBytes bounds how much event data one group commit gathers: large
// enough to amortise an fsync over many requests, small enough that one
// block decodes quickly and stays far below Badger's value size limit.
const maxBlockBytes = 1 << 20

// A block value is an envelope: [version][flags][crc32c of body, 4 bytes BE][body].
// With flagZstd the body is zstd-compressed. The decompressed body is
//
//	stored unix millis (8 bytes BE) | count (uvarint) |
//	count × ( uvarint len | writeKey | uvarint len | dest | uvarint len | data )
//
// FORMAT.md describes the same layout for people.
const (
	blockVersion = 1
	flagZstd     = 1 << 0
	envelopeLen  = 6
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// eventDict primes every block's compression with the vocabulary Segment
// events share (the spec's fields, analytics.js context, e-commerce
// properties). At moderate load a group commit holds one request, about
// 100 events, where the first occurrence of each key is a noticeable part
// of the block: the dictionary makes such blocks 3% smaller. Its frame
// header names it by dictID. It must never change: blocks written with it
// could not be read. A different one needs a new ID, and both kept.
//
//go:embed dict.txt
var eventDict []byte

const dictID = 1

// Encoders and decoders are costly to build and hold window buffers, so a
// few are kept for reuse. Not a sync.Pool: it is emptied at every garbage
// collection, and under many small requests that rebuilt an encoder for
// most blocks.
var (
	encoders = newFreeList(runtime.GOMAXPROCS(0), func() *zstd.Encoder {
		// The fastest level: on realistic events it compresses within 1%
		// of the default level at one and a half times the speed.
		e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true),
			// A block is at most about maxBlockBytes: a larger window
			// would only hold memory.
			zstd.WithWindowSize(maxBlockBytes),
			// The envelope's crc32c covers the compressed bytes already; a
			// frame checksum too cost 2% of the CPU at full load.
			zstd.WithEncoderCRC(false),
			zstd.WithEncoderDictRaw(dictID, eventDict))
		if err != nil {
			panic(err) // only on invalid options, which are constant here
		}
		return e
	})
	decoders = newFreeList(runtime.GOMAXPROCS(0), func() *zstd.Decoder {
		d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxMemory(maxBlockRawBytes), zstd.WithDecoderDictRaw(dictID, eventDict))
		if err != nil {
			panic(err)
		}
		return d
	})
)

// freeList keeps up to a fixed number of costly things for reuse.
type freeList[T any] struct {
	free  chan T
	build func() T
}

func newFreeList[T any](size int, build func() T) *freeList[T] {
	return &freeList[T]{free: make(chan T, size), build: build}
}

func (p *freeList[T]) get() T {
	select {
	case c := <-p.free:
		return c
	default:
		return p.build()
	}
}

// drain lets go of every kept item.
func (p *freeList[T]) drain() { p.trim(0) }

// trim lets go of the kept items beyond keep.
func (p *freeList[T]) trim(keep int) {
	for len(p.free) > keep {
		select {
		case <-p.free:
		default:
			return
		}
	}
}

func (p *freeList[T]) put(c T) {
	select {
	case p.free <- c:
	default:
	}
}

// maxBlockRawBytes bounds what a decoder will inflate, so a corrupt or
// hostile length can never make one block eat the memory budget.
const maxBlockRawBytes = 64 << 20

// errCorrupt is wrapped by every decoding failure.
var errCorrupt = errors.New("corrupt block")

// encodeBody appends the uncompressed body of a block holding events.
func encodeBody(dst []byte, stored time.Time, events []Event) []byte {
	dst = appendBodyHeader(dst, stored, len(events))
	for i := range events {
		dst = appendEvent(dst, &events[i])
	}
	return dst
}

// appendBodyHeader appends a block body's header: what precedes its events.
func appendBodyHeader(dst []byte, stored time.Time, count int) []byte {
	dst = binary.BigEndian.AppendUint64(dst, uint64(stored.UnixMilli()))
	return binary.AppendUvarint(dst, uint64(count))
}

// appendEvent appends one event as a block body holds it.
func appendEvent(dst []byte, e *Event) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(e.WriteKey)))
	dst = append(dst, e.WriteKey...)
	dst = binary.AppendUvarint(dst, uint64(len(e.Dest)))
	dst = append(dst, e.Dest...)
	dst = binary.AppendUvarint(dst, uint64(len(e.Data)))
	return append(dst, e.Data...)
}

// scratchBuffers recycles the uncompressed bodies blocks are built in and
// the space they are compressed into: at full load these were most of what
// the spool allocated, and nothing keeps either once a block is sealed.
// Four: at full load a filling group and a sealing one hold one or two
// bodies each, and the sealing one's blocks need space to be compressed
// into; keeping eight (about 1 MiB each) cost 4 MiB of memory for a little
// less garbage.
var scratchBuffers = newFreeList(4, func() *[]byte { return new([]byte) })

// deadBuffers recycles the bodies of dead-letter blocks apart from
// scratchBuffers: a group's dead letters are often a fraction of its
// events, and a body that held them, handed to the events next, was grown
// again (with a tracking plan blocking half the events, that regrowth was
// most of what the spool allocated). Two: a filling group and a sealing
// one.
var deadBuffers = newFreeList(2, func() *[]byte { return new([]byte) })

// sealBlock compresses body into a fresh envelope of exactly its size,
// since the envelope stays in memory for as long as it is a recent block.
func sealBlock(body []byte) []byte {
	scratch := scratchBuffers.get()
	enc := encoders.get()
	out := enc.EncodeAll(body, append((*scratch)[:0], make([]byte, envelopeLen)...))
	encoders.put(enc)
	out[0] = blockVersion
	out[1] = flagZstd
	binary.BigEndian.PutUint32(out[2:6], crc32.Checksum(out[envelopeLen:], castagnoli))
	val := bytes.Clone(out)
	*scratch = out
	scratchBuffers.put(scratch)
	return val
}

// recentBlock is a block just committed, as stored. val is never modified
// once sealed, so readers may decode it without holding any lock.
type recentBlock struct {
	meta blockMeta
	val  []byte
}

// decodedBlock is a block's events as a reader sees them.
type decodedBlock struct {
	first  uint64
	stored time.Time
	dests  []string // parallel to recs; "" for every consumer
	recs   []Record // Data slices into raw
	raw    []byte   // the decompressed body
}

// openBlock checks the envelope and returns the decompressed body.
func openBlock(val []byte) ([]byte, error) { return openBlockInto(nil, val) }

// openBlockInto is openBlock decompressing into dst's memory.
func openBlockInto(dst, val []byte) ([]byte, error) {
	if len(val) == 0 {
		return nil, fmt.Errorf("%w: empty value (its value log is damaged or cut short)", errCorrupt)
	}
	if len(val) < envelopeLen {
		return nil, fmt.Errorf("%w: %d bytes, shorter than its envelope", errCorrupt, len(val))
	}
	if val[0] != blockVersion {
		return nil, fmt.Errorf("%w: unknown version %d", errCorrupt, val[0])
	}
	body := val[envelopeLen:]
	if got, want := crc32.Checksum(body, castagnoli), binary.BigEndian.Uint32(val[2:6]); got != want {
		return nil, fmt.Errorf("%w: checksum %08x, want %08x", errCorrupt, got, want)
	}
	if val[1]&flagZstd == 0 {
		// A copy: val may be Badger's buffer, valid only inside its
		// transaction, and records outlive that.
		return append(dst[:0], body...), nil
	}
	dec := decoders.get()
	raw, err := dec.DecodeAll(body, dst[:0])
	decoders.put(dec)
	if err != nil {
		return nil, fmt.Errorf("%w: decompress: %v", errCorrupt, err)
	}
	return raw, nil
}

// decodeBody parses a decompressed body whose first event has sequence
// number first. Record.Data slices into body.
func decodeBody(first uint64, body []byte) (*decodedBlock, error) {
	b := new(decodedBlock)
	return b, b.decode(first, body)
}

// decode parses body into b, reusing b's slices.
func (b *decodedBlock) decode(first uint64, body []byte) error {
	b.first, b.recs, b.dests = first, b.recs[:0], b.dests[:0]
	b.stored = time.Time{}
	if len(body) < 8 {
		return fmt.Errorf("%w: body of %d bytes", errCorrupt, len(body))
	}
	b.stored = time.UnixMilli(int64(binary.BigEndian.Uint64(body)))
	p := body[8:]
	count, n := binary.Uvarint(p)
	if n <= 0 || count > uint64(len(p)) {
		return fmt.Errorf("%w: bad event count", errCorrupt)
	}
	p = p[n:]
	stored := b.stored
	var keys internTable
	for i := uint64(0); i < count; i++ {
		var key, dest, data []byte
		var err error
		if key, p, err = readField(p); err != nil {
			return fmt.Errorf("event %d write key: %w", i, err)
		}
		if dest, p, err = readField(p); err != nil {
			return fmt.Errorf("event %d destination: %w", i, err)
		}
		if data, p, err = readField(p); err != nil {
			return fmt.Errorf("event %d data: %w", i, err)
		}
		b.recs = append(b.recs, Record{Seq: first + i, WriteKey: keys.intern(key), Data: data, Stored: stored})
		b.dests = append(b.dests, keys.intern(dest))
	}
	if len(p) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", errCorrupt, len(p))
	}
	return nil
}

func readField(p []byte) (field, rest []byte, err error) {
	l, n := binary.Uvarint(p)
	if n <= 0 || l > uint64(len(p)-n) {
		return nil, nil, fmt.Errorf("%w: bad field length", errCorrupt)
	}
	end := n + int(l)
	return p[n:end:end], p[end:], nil
}

// internTable shares one string among the many events of a block that
// carry the same write key, instead of allocating one per event.
type internTable struct{ last []string }

func (t *internTable) intern(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	for _, s := range t.last {
		if s == string(b) {
			return s
		}
	}
	s := string(b)
	if len(t.last) < 8 {
		t.last = append(t.last, s)
	}
	return s
}
