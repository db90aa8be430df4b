package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The messageId index's runs and filters (dedupe.go says how they are
// used; FORMAT.md, how a run is laid out).

type dedupeRun struct {
	path      string
	epoch     uint64
	watermark uint64
	replaces  uint64 // the watermark of the run it was merged from; 0 none
	count     int
	newest    uint32
	size      int64
	sparse    []uint64
	f         *os.File
}

type dedupeEntry struct {
	key uint64
	at  uint32
}

func cmpUint64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// appendMerged appends to a run's body the entries of old (another run's,
// as stored) and entries, both sorted by key, in key order: the newer of
// a key's two, and none stored before cutoff. Merging as stored, not
// decoded, took what writing a merged run allocated to under half.
func appendMerged(body, old []byte, entries []dedupeEntry, cutoff uint32) []byte {
	j := 0
	add := func(key uint64, at uint32) {
		if at >= cutoff {
			body = binary.BigEndian.AppendUint64(body, key)
			body = binary.BigEndian.AppendUint32(body, at)
		}
	}
	for ; len(old) >= dedupeEntryBytes; old = old[dedupeEntryBytes:] {
		key, at := binary.BigEndian.Uint64(old), binary.BigEndian.Uint32(old[8:])
		for j < len(entries) && entries[j].key < key {
			add(entries[j].key, entries[j].at)
			j++
		}
		if j < len(entries) && entries[j].key == key {
			at = max(at, entries[j].at)
			j++
		}
		add(key, at)
	}
	for ; j < len(entries); j++ {
		add(entries[j].key, entries[j].at)
	}
	return body
}

// A run file: header, then the entries sorted by key.
//
//	magic "SPDX" (4) | version (1) | 0 (3) | epoch (8) | watermark (8) |
//	replaces (8) | count (4) | newest unix s (4) | crc32c (4) | 0 (4)
//	count × ( key (8) | stored unix s (4) )
//
// The checksum covers the header before it and the entries.
//
// buf is the run: dedupeRunHeader bytes of room, then the entries as
// stored.
func writeRun(dir string, epoch, watermark uint64, merged *dedupeRun, buf []byte) (*dedupeRun, error) {
	var newest uint32
	for e := buf[dedupeRunHeader:]; len(e) >= dedupeEntryBytes; e = e[dedupeEntryBytes:] {
		newest = max(newest, binary.BigEndian.Uint32(e[8:]))
	}
	var replaces uint64
	if merged != nil {
		replaces = merged.watermark
	}
	copy(buf, dedupeMagic[:])
	buf[4] = dedupeRunVersion
	clear(buf[5:8])
	binary.BigEndian.PutUint64(buf[8:], epoch)
	binary.BigEndian.PutUint64(buf[16:], watermark)
	binary.BigEndian.PutUint64(buf[24:], replaces)
	binary.BigEndian.PutUint32(buf[32:], uint32((len(buf)-dedupeRunHeader)/dedupeEntryBytes))
	binary.BigEndian.PutUint32(buf[36:], newest)
	crc := crc32.Update(crc32.Checksum(buf[:40], castagnoli), castagnoli, buf[dedupeRunHeader:])
	binary.BigEndian.PutUint32(buf[40:], crc)
	clear(buf[44:dedupeRunHeader])
	path := filepath.Join(dir, runName(epoch, watermark))
	if err := writeFileDurably(path, buf); err != nil {
		return nil, err
	}
	// Read back from what was written, not from the file: at full load,
	// reading each run again was a tenth of the index's allocations.
	return parseRun(path, buf)
}

func openRun(path string) (*dedupeRun, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseRun(path, data)
}

// parseRun checks the run data read from path and opens the file for
// lookups.
func parseRun(path string, data []byte) (*dedupeRun, error) {
	if len(data) < dedupeRunHeader || [4]byte(data[:4]) != dedupeMagic || data[4] != dedupeRunVersion {
		return nil, fmt.Errorf("%w: not a dedupe run", errCorrupt)
	}
	r := &dedupeRun{
		path:      path,
		epoch:     binary.BigEndian.Uint64(data[8:]),
		watermark: binary.BigEndian.Uint64(data[16:]),
		replaces:  binary.BigEndian.Uint64(data[24:]),
		count:     int(binary.BigEndian.Uint32(data[32:])),
		newest:    binary.BigEndian.Uint32(data[36:]),
		size:      int64(len(data)),
	}
	if len(data) != dedupeRunHeader+r.count*dedupeEntryBytes {
		return nil, fmt.Errorf("%w: dedupe run of %d bytes for %d entries", errCorrupt, len(data), r.count)
	}
	crc := crc32.Update(crc32.Checksum(data[:40], castagnoli), castagnoli, data[dedupeRunHeader:])
	if crc != binary.BigEndian.Uint32(data[40:]) {
		return nil, fmt.Errorf("%w: dedupe run checksum mismatch", errCorrupt)
	}
	r.sparse = make([]uint64, 0, (r.count+dedupeSparse-1)/dedupeSparse)
	for i := 0; i < r.count; i += dedupeSparse {
		r.sparse = append(r.sparse, binary.BigEndian.Uint64(data[dedupeRunHeader+i*dedupeEntryBytes:]))
	}
	var err error
	if r.f, err = os.Open(path); err != nil {
		return nil, err
	}
	return r, nil
}

// entries reads the run's entries as stored.
func (r *dedupeRun) entries() ([]byte, error) {
	data := make([]byte, r.count*dedupeEntryBytes)
	if _, err := r.f.ReadAt(data, dedupeRunHeader); err != nil {
		return nil, err
	}
	return data, nil
}

// find looks k up with one read of the slot that may hold it.
func (r *dedupeRun) find(k uint64, page *[]byte) (at uint32, ok bool, err error) {
	slot, found := slices.BinarySearch(r.sparse, k)
	if !found {
		slot--
	}
	if slot < 0 {
		return 0, false, nil
	}
	first := slot * dedupeSparse
	n := min(dedupeSparse, r.count-first)
	if cap(*page) < dedupeSparse*dedupeEntryBytes {
		*page = make([]byte, dedupeSparse*dedupeEntryBytes)
	}
	buf := (*page)[:n*dedupeEntryBytes]
	if _, err := r.f.ReadAt(buf, int64(dedupeRunHeader+first*dedupeEntryBytes)); err != nil {
		return 0, false, err
	}
	lo, hi := 0, n
	for lo < hi {
		mid := (lo + hi) / 2
		if binary.BigEndian.Uint64(buf[mid*dedupeEntryBytes:]) < k {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo < n && binary.BigEndian.Uint64(buf[lo*dedupeEntryBytes:]) == k {
		return binary.BigEndian.Uint32(buf[lo*dedupeEntryBytes+8:]), true, nil
	}
	return 0, false, nil
}

func (r *dedupeRun) remove(log *slog.Logger) {
	_ = r.f.Close()
	if err := os.Remove(r.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.Warn("remove dedupe run", "run", filepath.Base(r.path), "err", err)
	}
}

// blockedBloom is a Bloom filter whose probes for a key all fall in one
// 64-byte block: one cache miss a lookup. The key is already a good hash,
// so its bits are used directly.
type blockedBloom struct {
	blocks [][8]uint64
	mapped []byte // blocks' memory, when mapped by newBlockedBloom
}

const bloomProbes = 7

// dedupeCapacity is how many entries an epoch of the index holds under a
// bound of maxBytes on disk: two epochs share it.
func dedupeCapacity(maxBytes int64) int {
	return max(1, int(maxBytes/dedupeEntryBytes/2))
}

// bloomBlocks is the size, in 64-byte blocks, of the filter of an epoch of
// entries.
func bloomBlocks(entries int) int { return max(1, entries*dedupeFilterBits/512) }

// DedupeFilterBytes is the memory the index's filters take outside the Go
// heap at most, so that a memory limit for the heap can leave room for
// them: 5.6 MiB at the default bound.
func (c Config) DedupeFilterBytes() int64 {
	if c.DedupeWindow == 0 {
		return 0
	}
	maxBytes := c.DedupeMaxBytes
	if maxBytes == 0 {
		maxBytes = DefaultDedupeMaxBytes
	}
	return 2 * 64 * int64(bloomBlocks(dedupeCapacity(maxBytes)))
}

// newBlockedBloom maps the filter's memory outside the Go heap: two
// filters are 5.6 MiB at the default bound, and counted in the heap under
// spillway's GOMEMLIMIT (then 40 MiB) they made the collector run far more often
// (a third of the throughput at W1). The pages are the kernel's zeroes
// until a key sets a bit in them. free must be called once the filter is
// no longer used.
func newBlockedBloom(entries int) blockedBloom {
	n := bloomBlocks(entries)
	mem, err := unix.Mmap(-1, 0, n*64, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return blockedBloom{blocks: make([][8]uint64, n)} // on the heap, then
	}
	return blockedBloom{blocks: unsafe.Slice((*[8]uint64)(unsafe.Pointer(&mem[0])), n), mapped: mem}
}

// free gives the filter's memory back.
func (b *blockedBloom) free() {
	if b.mapped != nil {
		_ = unix.Munmap(b.mapped)
	}
	*b = blockedBloom{}
}

func (b *blockedBloom) locate(k uint64) (*[8]uint64, uint64) {
	hi, _ := bits.Mul64(k, uint64(len(b.blocks)))
	// The block comes from the key's high bits (through the multiply);
	// the probes from a remix, so that they do not depend on the block.
	return &b.blocks[hi], k*0x9e3779b97f4a7c15 ^ k>>29
}

func (b *blockedBloom) add(k uint64) {
	blk, h := b.locate(k)
	for range bloomProbes {
		blk[h>>6&7] |= 1 << (h & 63)
		h >>= 9
	}
}

func (b *blockedBloom) has(k uint64) bool {
	blk, h := b.locate(k)
	for range bloomProbes {
		if blk[h>>6&7]&(1<<(h&63)) == 0 {
			return false
		}
		h >>= 9
	}
	return true
}
