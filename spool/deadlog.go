package spool

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The dead-letter store is a directory of append-only segment files, each
// a run of frames holding one sealed block of dead letters, with a file of
// the ids deleted from it beside it. Kept in meta's LSM tree, dead letters
// arriving at full load (a tracking plan blocking half the events) were
// flushed and compacted over and over: each table built in a 3 MiB
// buffer, compaction holding 10 to 14 MiB, and a second database's
// commit path in every group. W1 fell to a seventh of its rate and
// spillway past its memory bound. A segment is written once, read with
// pread (nothing mapped, nothing left resident), and reclaimed by
// removing it once every letter in it is deleted, or rewritten once half
// of them are.

const (
	deadDirName = "dead"
	// deadSegmentBytes is where a segment stops taking frames: a rewrite
	// reads one whole, and one letter left in it keeps it all on disk.
	deadSegmentBytes = 4 << 20
	frameHeaderLen   = 8  // size (4) · crc32c of the payload (4)
	deadFrameMetaLen = 20 // first id (8) · last id (8) · count (4)
	// maxFramePayload rejects a frame header that cannot be ours before
	// its size is trusted for a read.
	maxFramePayload = 64 << 20
	segmentSuffix   = ".seg"
	goneSuffix      = ".gone"
)

func deadDir(spoolDir string) string { return filepath.Join(spoolDir, deadDirName) }

// deadSegment is one segment file as its revision left it; a rewrite
// makes a new one.
type deadSegment struct {
	serial, rev uint64
	count       int      // letters in its frames
	gone        []uint64 // ids deleted from it, sorted
	size        int64    // where the next frame goes
	file        *os.File // open for appending while it is the active one
	goneFile    *os.File // open for appending once something was deleted
	// damaged: bytes of it could not be read at the open. Kept for
	// whoever looks into it, even once no letter of it is left.
	damaged bool
}

func (g *deadSegment) name() string { return fmt.Sprintf("%020d-%d", g.serial, g.rev) }
func (g *deadSegment) live() int    { return g.count - len(g.gone) }

func (g *deadSegment) isGone(id uint64) bool {
	_, found := slices.BinarySearch(g.gone, id)
	return found
}

// deadFrame is where one block of dead letters is: ids first to last,
// count of them (fewer than last-first+1 after a rewrite).
type deadFrame struct {
	seg         *deadSegment
	off         int64 // of its header
	size        int32 // of its payload
	count       int32
	first, last uint64
}

// deadLog is the store's index in memory: every frame by first id (the
// ranges of two frames never overlap) and where the next ones go. Its
// methods are called with Spool.deadMu held.
type deadLog struct {
	dir        string
	syncWrites bool
	log        *slog.Logger
	frames     []deadFrame
	segs       []*deadSegment
	active     *deadSegment
	nextSerial uint64
	live       uint64
	// unsynced holds the files written since they were last synced
	// (SyncInterval).
	unsynced map[*os.File]bool
	buf      []byte // the frames of one append, reused
}

// openDeadLog reads the store's frame headers and deletions, finishing
// what a crash interrupted: a torn frame at the end of the newest segment
// is cut off (it was never acknowledged), an older revision of a
// rewritten segment and the files of an emptied one are removed.
func openDeadLog(spoolDir string, syncWrites bool, log *slog.Logger) (*deadLog, error) {
	dir := deadDir(spoolDir)
	if err := createDir(dir); err != nil {
		return nil, err
	}
	if err := sweepTemporary(dir); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	l := &deadLog{dir: dir, syncWrites: syncWrites, log: log, unsynced: map[*os.File]bool{}}
	newest := map[uint64]uint64{} // serial -> its highest revision
	for _, e := range entries {
		base, isSegment := strings.CutSuffix(e.Name(), segmentSuffix)
		if !isSegment {
			continue
		}
		if serial, rev, ok := parseSegmentName(base); ok {
			if r, seen := newest[serial]; !seen || rev > r {
				newest[serial] = rev
			}
		}
	}
	// Of the store's other files, those of an older revision or of no
	// segment are the leftovers of a rewrite or a removal; a file it did
	// not write is left alone.
	for _, e := range entries {
		base := strings.TrimSuffix(strings.TrimSuffix(e.Name(), segmentSuffix), goneSuffix)
		serial, rev, ok := parseSegmentName(base)
		if !ok || base == e.Name() {
			if !e.IsDir() {
				log.Warn("a file the dead-letter store did not write: left alone", "file", filepath.Join(dir, e.Name()))
			}
			continue
		}
		if r, seen := newest[serial]; !seen || rev != r {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return nil, err
			}
		}
	}
	serials := make([]uint64, 0, len(newest))
	for serial := range newest {
		serials = append(serials, serial)
	}
	slices.Sort(serials)
	var segs []*deadSegment
	for i, serial := range serials {
		g := &deadSegment{serial: serial, rev: newest[serial]}
		if err := l.load(g, i == len(serials)-1); err != nil {
			return nil, err
		}
		segs = append(segs, g)
		l.nextSerial = serial + 1
	}
	slices.SortFunc(l.frames, func(a, b deadFrame) int { return cmp.Compare(a.first, b.first) })
	// Ids are given once, so the ranges of two frames never overlap; a
	// damaged header could say otherwise, and the index's searches rely
	// on them not to.
	kept := l.frames[:0]
	for _, fr := range l.frames {
		if n := len(kept); n > 0 && kept[n-1].last >= fr.first {
			log.Error("dead-letter frame overlaps another, its header damaged: its letters are skipped", "segment", fr.seg.name(), "offset", fr.off)
			fr.seg.count -= int(fr.count)
			fr.seg.damaged = true
			continue
		}
		kept = append(kept, fr)
	}
	l.frames = kept
	for _, g := range segs {
		// Deletions count only inside the frames kept: a segment is
		// removed only when every letter of those is deleted.
		g.gone = slices.DeleteFunc(g.gone, func(id uint64) bool {
			i, ok := l.frameAt(id)
			return !ok || l.frames[i].first > id || l.frames[i].seg != g
		})
		if g.live() <= 0 {
			if g.damaged {
				continue
			}
			// Every letter deleted: a crash came before its removal.
			if err := l.removeSegment(g); err != nil {
				return nil, err
			}
			continue
		}
		l.segs = append(l.segs, g)
		l.live += uint64(g.live())
	}
	return l, nil
}

func parseSegmentName(base string) (serial, rev uint64, ok bool) {
	s, r, found := strings.Cut(base, "-")
	if !found || len(s) != 20 {
		return 0, 0, false
	}
	serial, err1 := strconv.ParseUint(s, 10, 64)
	rev, err2 := strconv.ParseUint(r, 10, 64)
	return serial, rev, err1 == nil && err2 == nil
}

func (l *deadLog) path(g *deadSegment, suffix string) string {
	return filepath.Join(l.dir, g.name()+suffix)
}

// load reads a segment's frame headers into the index, and its deletions.
// Only the newest segment can end in a torn frame, the one it was
// appending when a crash came: its frames are checked whole and the tear
// cut off. An older one was whole when the writer left it: its headers
// suffice, and a frame's checksum is checked when it is read.
func (l *deadLog) load(g *deadSegment, newest bool) error {
	f, err := os.OpenFile(l.path(g, segmentSuffix), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return err
	}
	var hdr [frameHeaderLen + deadFrameMetaLen]byte
	var payload []byte
	off, end := int64(0), info.Size()
	for off < end {
		bad := func(why string) error {
			if newest {
				l.log.Warn("dead-letter segment ends in a torn frame, never acknowledged: cut off", "segment", g.name(), "offset", off, "bytes", end-off, "why", why)
				if err := f.Truncate(off); err != nil {
					return err
				}
				return f.Sync()
			}
			l.log.Error("dead-letter segment damaged: the letters after the damage are unreadable", "segment", g.name(), "offset", off, "why", why)
			g.damaged = true
			return nil
		}
		if _, err := f.ReadAt(hdr[:], off); err != nil {
			return bad("short header")
		}
		size := binary.BigEndian.Uint32(hdr[0:4])
		if size < deadFrameMetaLen || size > maxFramePayload || off+frameHeaderLen+int64(size) > end {
			return bad("bad size")
		}
		if newest {
			payload = slices.Grow(payload[:0], int(size))[:size]
			if _, err := f.ReadAt(payload, off+frameHeaderLen); err != nil {
				return bad(err.Error())
			}
			if crc32.Checksum(payload, castagnoli) != binary.BigEndian.Uint32(hdr[4:8]) {
				next := off + frameHeaderLen + int64(size)
				if !wholeFrames(f, next, end) {
					return bad("checksum")
				}
				// Whole frames follow: damage, not a tear. They were
				// acknowledged; this one's letters are lost.
				l.log.Error("dead-letter frame damaged: its letters are skipped", "segment", g.name(), "offset", off)
				g.damaged = true
				off = next
				continue
			}
		}
		fr := deadFrame{
			seg: g, off: off, size: int32(size),
			first: binary.BigEndian.Uint64(hdr[8:16]),
			last:  binary.BigEndian.Uint64(hdr[16:24]),
			count: int32(binary.BigEndian.Uint32(hdr[24:28])),
		}
		if fr.last < fr.first || fr.last == math.MaxUint64 || fr.count < 1 || uint64(fr.count-1) > fr.last-fr.first {
			return bad("bad ids")
		}
		l.frames = append(l.frames, fr)
		g.count += int(fr.count)
		off += frameHeaderLen + int64(size)
	}
	g.size = off
	return l.loadGone(g)
}

// wholeFrames reports whether f holds one or more whole frames, each
// matching its checksum, from off to end.
func wholeFrames(f *os.File, off, end int64) bool {
	if off >= end {
		return false
	}
	rest := make([]byte, end-off)
	if _, err := f.ReadAt(rest, off); err != nil {
		return false
	}
	for len(rest) > 0 {
		payload, ok := nextFrame(rest)
		if !ok {
			return false
		}
		rest = rest[frameHeaderLen+len(payload):]
	}
	return true
}

// loadGone reads a segment's deletions, cutting off a torn last one.
func (l *deadLog) loadGone(g *deadSegment) error {
	data, err := os.ReadFile(l.path(g, goneSuffix))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	off := 0
	for off < len(data) {
		payload, ok := nextFrame(data[off:])
		if !ok || len(payload)%8 != 0 {
			l.log.Warn("dead-letter deletions end in a torn frame, never acknowledged: cut off", "segment", g.name(), "offset", off)
			if err := os.Truncate(l.path(g, goneSuffix), int64(off)); err != nil {
				return err
			}
			break
		}
		for p := payload; len(p) > 0; p = p[8:] {
			g.gone = append(g.gone, binary.BigEndian.Uint64(p))
		}
		off += frameHeaderLen + len(payload)
	}
	slices.Sort(g.gone)
	g.gone = slices.Compact(g.gone)
	return nil
}

// nextFrame returns the payload of the frame p starts with, if it is whole
// and matches its checksum.
func nextFrame(p []byte) ([]byte, bool) {
	if len(p) < frameHeaderLen {
		return nil, false
	}
	size := binary.BigEndian.Uint32(p[0:4])
	if uint64(size) > uint64(len(p)-frameHeaderLen) {
		return nil, false
	}
	payload := p[frameHeaderLen : frameHeaderLen+int(size)]
	return payload, crc32.Checksum(payload, castagnoli) == binary.BigEndian.Uint32(p[4:8])
}

func appendFrameHeader(dst []byte, payload []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload)))
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(payload, castagnoli))
}

// appendDeadFrame appends block b as a segment frame.
func appendDeadFrame(dst []byte, b deadBlock) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, frameHeaderLen)...)
	dst = binary.BigEndian.AppendUint64(dst, b.first)
	dst = binary.BigEndian.AppendUint64(dst, b.last)
	dst = binary.BigEndian.AppendUint32(dst, uint32(b.count))
	dst = append(dst, b.val...)
	payload := dst[start+frameHeaderLen:]
	appendFrameHeader(dst[start:start], payload)
	return dst
}

// nextID is the id after the newest stored dead letter; 0 if none is.
func (l *deadLog) nextID() uint64 {
	if len(l.frames) == 0 {
		return 0
	}
	return l.frames[len(l.frames)-1].last + 1
}

// covers reports whether a stored frame's range holds id.
func (l *deadLog) covers(id uint64) bool {
	i, ok := l.frameAt(id)
	return ok && l.frames[i].first <= id
}

// frameAt returns the index of the first frame holding ids at or above
// id.
func (l *deadLog) frameAt(id uint64) (int, bool) {
	i, _ := slices.BinarySearchFunc(l.frames, id, func(fr deadFrame, id uint64) int {
		if fr.last < id {
			return -1
		}
		if fr.first > id {
			return 1
		}
		return 0
	})
	return i, i < len(l.frames)
}

// append stores sealed blocks, durable before it returns under
// SyncAlways. A failed write is cut off again, so that the segment holds
// whole frames only.
func (l *deadLog) append(blocks []deadBlock) error {
	if len(blocks) == 0 {
		return nil
	}
	buf := l.buf[:0]
	for _, b := range blocks {
		buf = appendDeadFrame(buf, b)
	}
	if cap(buf) <= 4*deadBlockRawBytes {
		l.buf = buf // a rare large append's is not kept
	}
	g, err := l.activeSegment()
	if err != nil {
		return err
	}
	if _, err := g.file.Write(buf); err != nil {
		if terr := g.file.Truncate(g.size); terr != nil {
			// The segment may end in a partial frame: leave it (a
			// reader stops there) and write on in a new one.
			l.retire(g)
		}
		return fmt.Errorf("write dead letters: %w", err)
	}
	if err := l.synced(g.file); err != nil {
		l.retire(g) // what it holds past its last sync is uncertain
		return fmt.Errorf("sync dead letters: %w", err)
	}
	l.live += uint64(l.index(g, blocks))
	return nil
}

// index adds blocks, just written to g at its end as appendDeadFrame
// lays them out, to the index, and returns how many letters they hold.
func (l *deadLog) index(g *deadSegment, blocks []deadBlock) (letters int) {
	for _, b := range blocks {
		size := int32(deadFrameMetaLen + len(b.val))
		fr := deadFrame{seg: g, off: g.size, size: size, count: int32(b.count), first: b.first, last: b.last}
		i, _ := slices.BinarySearchFunc(l.frames, fr.first, func(fr deadFrame, id uint64) int { return cmp.Compare(fr.first, id) })
		l.frames = slices.Insert(l.frames, i, fr)
		g.size += frameHeaderLen + int64(size)
		g.count += b.count
		letters += b.count
	}
	return letters
}

// synced makes f's writes durable now under SyncAlways, or marks it for
// the next sync.
func (l *deadLog) synced(f *os.File) error {
	if !l.syncWrites {
		l.unsynced[f] = true
		return nil
	}
	return unix.Fdatasync(int(f.Fd()))
}

// sync makes every write since the last one durable (SyncInterval).
func (l *deadLog) sync() error {
	var errs []error
	for f := range l.unsynced {
		errs = append(errs, unix.Fdatasync(int(f.Fd())))
		delete(l.unsynced, f)
	}
	return errors.Join(errs...)
}

// activeSegment returns the segment taking frames, starting a new one
// when there is none or it is full.
func (l *deadLog) activeSegment() (*deadSegment, error) {
	if g := l.active; g != nil && g.size < deadSegmentBytes {
		return g, nil
	}
	if l.active != nil {
		l.retire(l.active)
	}
	g := &deadSegment{serial: l.nextSerial}
	f, err := os.OpenFile(l.path(g, segmentSuffix), os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("new dead-letter segment: %w", err)
	}
	l.nextSerial++
	// Its name must survive a power cut with the frames synced into it.
	if err := syncDir(l.dir); err != nil {
		_ = f.Close()
		_ = os.Remove(l.path(g, segmentSuffix))
		return nil, err
	}
	g.file = f
	l.active = g
	l.segs = append(l.segs, g)
	return g, nil
}

// retire stops appending to g.
func (l *deadLog) retire(g *deadSegment) {
	if g.file != nil {
		if l.unsynced[g.file] {
			if err := unix.Fdatasync(int(g.file.Fd())); err != nil {
				l.log.Error("sync dead-letter segment", "segment", g.name(), "err", err)
			}
			delete(l.unsynced, g.file)
		}
		_ = g.file.Close()
		g.file = nil
	}
	if l.active == g {
		l.active = nil
	}
}

// readDeadFrame returns the dead letters of frame fr, read through f, a file of
// its segment's revision.
func readDeadFrame(f *os.File, fr deadFrame) ([]DeadLetter, error) {
	buf := make([]byte, frameHeaderLen+int(fr.size))
	if _, err := f.ReadAt(buf, fr.off); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("dead-letter segment %s at %d: %w", fr.seg.name(), fr.off, err)
	}
	payload, ok := nextFrame(buf)
	if !ok || len(payload) != int(fr.size) {
		return nil, fmt.Errorf("%w: dead-letter segment %s at %d: checksum", errCorrupt, fr.seg.name(), fr.off)
	}
	dead, err := openDeadBlock(payload[deadFrameMetaLen:])
	if err != nil {
		return nil, fmt.Errorf("dead-letter segment %s at %d: %w", fr.seg.name(), fr.off, err)
	}
	return dead, nil
}

// remove deletes the dead letters with the sorted ids given that are
// stored and not deleted yet. A segment left empty is removed, one left
// half empty rewritten.
func (l *deadLog) remove(ids []uint64) error {
	bySeg := map[*deadSegment][]uint64{}
	var order []*deadSegment
	var files fileCache
	defer files.close()
	for len(ids) > 0 {
		i, ok := l.frameAt(ids[0])
		if !ok {
			break
		}
		fr := l.frames[i]
		if ids[0] < fr.first {
			ids = ids[1:] // between frames: already gone
			continue
		}
		inFrame := 0
		for inFrame < len(ids) && ids[inFrame] <= fr.last {
			inFrame++
		}
		want := ids[:inFrame]
		ids = ids[inFrame:]
		f, err := files.open(l.path(fr.seg, segmentSuffix))
		if err != nil {
			return err
		}
		dead, err := readDeadFrame(f, fr)
		if err != nil {
			return err
		}
		for _, d := range dead {
			if _, found := slices.BinarySearch(want, d.ID); found && !fr.seg.isGone(d.ID) {
				if bySeg[fr.seg] == nil {
					order = append(order, fr.seg)
				}
				bySeg[fr.seg] = append(bySeg[fr.seg], d.ID)
			}
		}
	}
	for _, g := range order {
		if err := l.markGone(g, bySeg[g]); err != nil {
			return err
		}
	}
	for _, g := range order {
		var err error
		switch {
		case g.live() == 0:
			err = l.removeSegment(g)
		case 2*len(g.gone) >= g.count:
			err = l.rewrite(g, &files)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// markGone records ids (sorted, stored in g, not yet deleted) as deleted.
func (l *deadLog) markGone(g *deadSegment, ids []uint64) error {
	payload := make([]byte, 0, 8*len(ids))
	for _, id := range ids {
		payload = binary.BigEndian.AppendUint64(payload, id)
	}
	frame := append(appendFrameHeader(make([]byte, 0, frameHeaderLen+len(payload)), payload), payload...)
	if g.goneFile == nil {
		f, err := os.OpenFile(l.path(g, goneSuffix), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("delete dead letters: %w", err)
		}
		if err := syncDir(l.dir); err != nil {
			_ = f.Close()
			return err
		}
		g.goneFile = f
	}
	if _, err := g.goneFile.Write(frame); err != nil {
		return fmt.Errorf("delete dead letters: %w", err)
	}
	if err := l.synced(g.goneFile); err != nil {
		return fmt.Errorf("delete dead letters: %w", err)
	}
	g.gone = append(g.gone, ids...)
	slices.Sort(g.gone)
	l.live -= uint64(len(ids))
	return nil
}

// removeSegment removes a segment whose letters are all deleted: the
// segment first, so that a crash in between leaves deletions of nothing,
// swept at the next open.
func (l *deadLog) removeSegment(g *deadSegment) error {
	l.retire(g)
	l.closeGone(g)
	if err := os.Remove(l.path(g, segmentSuffix)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.Remove(l.path(g, goneSuffix)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	l.forget(g)
	return syncDir(l.dir)
}

func (l *deadLog) closeGone(g *deadSegment) {
	if g.goneFile != nil {
		delete(l.unsynced, g.goneFile)
		_ = g.goneFile.Close()
		g.goneFile = nil
	}
}

// forget takes g and its frames out of the index.
func (l *deadLog) forget(g *deadSegment) {
	l.frames = slices.DeleteFunc(l.frames, func(fr deadFrame) bool { return fr.seg == g })
	l.segs = slices.DeleteFunc(l.segs, func(s *deadSegment) bool { return s == g })
}

// rewrite replaces g by a new revision holding only its letters not
// deleted. The new revision is in place, synced, before the old one's
// files go; the next open keeps the newest revision of a serial and
// removes the rest, so a crash in between loses and revives nothing.
func (l *deadLog) rewrite(g *deadSegment, files *fileCache) error {
	l.retire(g)
	f, err := files.open(l.path(g, segmentSuffix))
	if err != nil {
		return err
	}
	var kept []DeadLetter
	for _, fr := range l.frames {
		if fr.seg != g {
			continue
		}
		dead, err := readDeadFrame(f, fr)
		if errors.Is(err, errCorrupt) {
			// Its letters were unreadable already; the rewrite drops them.
			l.log.Error("dead-letter frame damaged: dropped by the segment's rewrite", "segment", g.name(), "first_id", fr.first, "last_id", fr.last, "err", err)
			continue
		}
		if err != nil {
			return err
		}
		for _, d := range dead {
			if !g.isGone(d.ID) {
				kept = append(kept, d)
			}
		}
	}
	next := &deadSegment{serial: g.serial, rev: g.rev + 1}
	blocks := sealDeadBlocks(kept)
	var buf []byte
	for _, b := range blocks {
		buf = appendDeadFrame(buf, b)
	}
	path := l.path(next, segmentSuffix)
	if err := writeFileDurably(path, buf); err != nil {
		return fmt.Errorf("rewrite dead-letter segment: %w", err)
	}
	l.closeGone(g)
	for _, name := range []string{l.path(g, segmentSuffix), l.path(g, goneSuffix)} {
		if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	l.forget(g)
	l.index(next, blocks)
	l.segs = append(l.segs, next)
	return nil
}

// close syncs what is unsynced and closes every file.
func (l *deadLog) close() error {
	err := l.sync()
	for _, g := range l.segs {
		l.retire(g)
		l.closeGone(g)
	}
	return err
}

// fileCache keeps the segment files one walk or removal opened, a few at
// a time: a walk of a large store would otherwise hold a descriptor for
// each of its segments. An open file stays readable after a rewrite
// removes its name.
type fileCache map[string]*os.File

const fileCacheSize = 4

func (c *fileCache) open(path string) (*os.File, error) {
	if f, ok := (*c)[path]; ok {
		return f, nil
	}
	if len(*c) >= fileCacheSize {
		c.close()
		clear(*c)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if *c == nil {
		*c = fileCache{}
	}
	(*c)[path] = f
	return f, nil
}

func (c *fileCache) close() {
	for _, f := range *c {
		_ = f.Close()
	}
}
