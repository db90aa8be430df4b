package powercut

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"
)

// seedStream separates powercut's random choices from other uses of a seed.
const seedStream = 0x706f776572637574 // "powercut"

// loseUnsynced turns the model's durable state into what the disk holds
// after the power loss: in Clean mode it is that already; in Harsh mode some
// unsynced data and directory changes are made durable too. It runs after
// the server stopped, so it reads the model unlocked.
func (f *FS) loseUnsynced(mode Mode) (Stats, error) {
	var stats Stats
	rng := rand.New(rand.NewPCG(f.opts.Seed, seedStream))
	ids := slices.Sorted(maps.Keys(f.inodes))
	var errs []error
	for _, id := range ids {
		m := f.inodes[id]
		if m.kind != kindFile || (len(m.dirty) == 0 && !m.sizeChanged) {
			continue
		}
		stats.FilesUnsynced++
		var kept int64
		if mode == Harsh && len(m.dirty) > 0 {
			var torn bool
			var err error
			kept, torn, err = f.writeBackSome(m, rng)
			if err != nil {
				errs = append(errs, fmt.Errorf("harsh write-back of inode %d: %w", m.ino, err))
			}
			if torn {
				stats.TornWrites++
			}
		}
		stats.BytesKept += kept
		stats.BytesDropped += m.dirty.size() - kept
	}
	var pending []*dirOp
	for _, op := range f.ops {
		if op.pending() {
			pending = append(pending, op)
		}
	}
	if mode == Harsh {
		n := rng.IntN(len(pending) + 1)
		for _, op := range pending[:n] {
			op.replay()
		}
		stats.DirOpsKept = n
	}
	stats.DirOpsDropped = len(pending) - stats.DirOpsKept
	return stats, errors.Join(errs...)
}

// writeBackSome makes a random half of m's unsynced pages durable, and one
// unsynced write durable only up to a random point (its pages past that
// point stay as they were). It reports the unsynced bytes kept and whether
// a write was torn.
func (f *FS) writeBackSome(m *minode, rng *rand.Rand) (int64, bool, error) {
	liveSize, err := fileSize(m.rfd)
	if err != nil {
		return 0, false, err
	}
	dirty := m.dirty.intersect(0, liveSize)
	var keep extents
	excluded := span{-1, -1}
	torn := false
	if ws := clipWrites(slices.Clone(m.writes), liveSize); len(ws) > 0 {
		w := ws[rng.IntN(len(ws))]
		cut := w.start + rng.Int64N(w.len())
		keep.add(w.start, cut)
		excluded = span{pageDown(cut), pageUp(w.end)}
		torn = true
	}
	last := int64(-1)
	for _, s := range dirty {
		for p := pageDown(s.start); p < s.end; p += pageSize {
			if p <= last {
				continue // a page shared with the previous span
			}
			last = p
			if p < excluded.end && p+pageSize > excluded.start {
				continue
			}
			if rng.IntN(2) == 0 {
				keep.add(p, min(p+pageSize, liveSize))
			}
		}
	}
	if len(keep) == 0 {
		return 0, torn, nil
	}
	st, err := f.openStore(m)
	if err != nil {
		return 0, torn, err
	}
	for _, s := range keep {
		if err := copyData(m.rfd, st, s.start, s.end); err != nil {
			return 0, torn, err
		}
	}
	// Pages written back past the durable size carry the size with them, as
	// in a journal's ordered mode.
	size := max(m.durableSize, keep[len(keep)-1].end)
	if err := st.Truncate(size); err != nil {
		return 0, torn, err
	}
	m.storeSize, m.durableSize = size, size
	var kept int64
	for _, s := range keep {
		kept += m.dirty.covered(s.start, s.end)
	}
	return kept, torn, nil
}

// materialise builds the durable tree in dst, which must be empty (or hold
// what a failed Mount left). A directory the model reaches twice (a rename
// of it made durable in its new parent only) is built once; a file reached
// twice becomes hard links.
func (f *FS) materialise(dst string) error {
	placed := map[*minode]string{}
	built := map[*minode]bool{f.root: true}
	return f.materialiseDir(f.root, dst, placed, built)
}

func (f *FS) materialiseDir(d *minode, dst string, placed map[*minode]string, built map[*minode]bool) error {
	for _, name := range slices.Sorted(maps.Keys(d.durable)) {
		m, p := d.durable[name], filepath.Join(dst, name)
		perm := os.FileMode(m.mode&0o777) | modeBits(m.mode)
		switch m.kind {
		case kindDir:
			if built[m] {
				continue
			}
			built[m] = true
			if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			if err := f.materialiseDir(m, p, placed, built); err != nil {
				return err
			}
			if err := os.Chmod(p, perm); err != nil {
				return err
			}
		case kindFile:
			if prev, ok := placed[m]; ok {
				if err := os.Link(prev, p); err != nil {
					return err
				}
				continue
			}
			if err := f.placeFile(m, p); err != nil {
				return err
			}
			placed[m] = p
			if err := os.Chmod(p, perm); err != nil {
				return err
			}
		case kindSymlink:
			if err := os.Symlink(m.target, p); err != nil {
				return err
			}
		case kindOther:
			if err := unix.Mknod(p, m.mode, int(m.rdev)); err != nil {
				return err
			}
		}
	}
	return nil
}

// placeFile moves m's durable content to p.
func (f *FS) placeFile(m *minode, p string) error {
	if !m.hasStore {
		file, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		return errors.Join(file.Truncate(m.durableSize), file.Close())
	}
	if m.store != nil {
		if err := m.store.Close(); err != nil {
			return err
		}
		m.store = nil
	}
	if !m.shared {
		if err := os.Truncate(f.storePath(m), m.durableSize); err != nil {
			return err
		}
	}
	m.hasStore = false
	return move(f.storePath(m), p)
}

// closeFiles closes the descriptors the model keeps.
func (f *FS) closeFiles() {
	for _, m := range f.inodes {
		if m.store != nil {
			m.store.Close()
			m.store = nil
		}
		if m.rfd != nil {
			m.rfd.Close()
			m.rfd = nil
		}
	}
}
