package spool

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// Generation sizing: a generation is rotated once it holds genMaxBytes of
// blocks or is genMaxAge old, so that a drained backlog gives its space
// back within about a minute. What is written to the active generation's
// mmapped value log stays resident until it is closed, so its size is
// part of peak RSS; each costs about 20 KiB of disk besides its blocks.
const (
	genMaxBytes = 4 << 20
	genMaxAge   = time.Minute
)

// A generation is one Badger database holding the blocks of a range of
// sequence numbers. Space comes back by removing a whole generation once
// every consumer has passed it: Badger used as a queue does not reliably
// return the space of deleted keys (dgraph-io/badger#1995).
type generation struct {
	num   uint64 // its place in the order of generations; names its directory
	first uint64 // no event before it is in this generation or a later one
	end   uint64 // after its last block, as recover found it; zero for one created since
	dir   string

	mu sync.Mutex
	// started is when the active generation received its first events (or
	// was last found empty): its age, for rotation, counts from there.
	started time.Time
	db      *badger.DB // nil while closed
	refs    int        // readers using db
	blocks  int        // stored blocks, for the spillway_spool_blocks gauge
}

const genPrefix = "gen-"

func genDirName(num uint64) string { return fmt.Sprintf("%s%020d", genPrefix, num) }

func parseGenDir(name string) (uint64, bool) {
	if !strings.HasPrefix(name, genPrefix) || len(name) != len(genPrefix)+20 {
		return 0, false
	}
	n, err := strconv.ParseUint(name[len(genPrefix):], 10, 64)
	return n, err == nil
}

// listGenerations returns the generation directories in dir, oldest first.
func listGenerations(dir string) ([]*generation, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var gens []*generation
	for _, e := range entries {
		if num, ok := parseGenDir(e.Name()); ok && e.IsDir() {
			gens = append(gens, &generation{num: num, dir: filepath.Join(dir, e.Name())})
		}
	}
	sort.Slice(gens, func(i, j int) bool { return gens[i].num < gens[j].num })
	return gens, nil
}

func (g *generation) startedAt() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.started
}

func (g *generation) setStarted(t time.Time) {
	g.mu.Lock()
	g.started = t
	g.mu.Unlock()
}

// acquire returns the generation's database, opening it if closed. Every
// acquire must be paired with a release.
func (g *generation) acquire(open func(dir string) (*badger.DB, error)) (*badger.DB, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.db == nil {
		db, err := open(g.dir)
		if err != nil {
			return nil, err
		}
		g.db = db
	}
	g.refs++
	return g.db, nil
}

func (g *generation) release() {
	g.mu.Lock()
	g.refs--
	g.mu.Unlock()
}

// closeIfUnused closes the database if nobody uses it. Its value log is
// mmapped, and every page written or read through that mapping counts
// toward RSS until it is closed: kept open for 5 s after their last use,
// finished generations held 90 MB with a destination down at half load.
// A reader that needs it again reopens it.
func (g *generation) closeIfUnused(log *slog.Logger) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.db == nil || g.refs > 0 {
		return
	}
	if err := g.db.Close(); err != nil {
		log.Warn("close unused generation", "dir", g.dir, "err", err)
	}
	g.db = nil
}

// remove closes and deletes the generation. It fails while a reader holds it.
func (g *generation) remove() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.refs > 0 {
		return errGenerationBusy
	}
	if g.db != nil {
		if err := g.db.Close(); err != nil {
			return fmt.Errorf("close generation: %w", err)
		}
		g.db = nil
	}
	// Rename first so that a crash half-way through RemoveAll leaves a
	// directory Open ignores and sweeps, never a damaged generation.
	trash := g.dir + ".removing"
	if err := os.Rename(g.dir, trash); err != nil {
		return fmt.Errorf("remove generation: %w", err)
	}
	if err := syncDir(filepath.Dir(g.dir)); err != nil {
		return err
	}
	return os.RemoveAll(trash)
}

var errGenerationBusy = errors.New("generation in use")

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}

// scan returns the generation's oldest and newest block.
func scanBlocks(db *badger.DB) (oldest, newest blockMeta, count int, err error) {
	err = db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixBlock}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			m, ok := parseBlockKey(it.Item().Key())
			if !ok {
				return fmt.Errorf("%w: malformed block key %x", errCorrupt, it.Item().Key())
			}
			if count == 0 {
				oldest = m
			}
			newest = m
			count++
		}
		return nil
	})
	return oldest, newest, count, err
}

// prepareSpare opens the generation the writer will move to next, so that
// moving is a swap rather than the tens of milliseconds Badger takes to
// create a database, which every request waiting on that commit would feel.
// The maintenance loop calls it once the active generation holds events
// (wantSpare): an idle spool keeps no spare open.
func (s *Spool) prepareSpare() {
	s.genMu.Lock()
	if s.spare != nil {
		s.genMu.Unlock()
		return
	}
	num := s.nextGen
	s.nextGen++
	s.genMu.Unlock()
	g, err := s.createGeneration(num)
	if err != nil {
		s.log.Warn("prepare next generation", "err", err)
		return
	}
	s.genMu.Lock()
	s.spare = g // only this loop sets it, so it is still nil
	s.genMu.Unlock()
}

func (s *Spool) createGeneration(num uint64) (*generation, error) {
	g := &generation{num: num, dir: filepath.Join(s.cfg.Dir, genDirName(num))}
	db, err := s.openGeneration(g.dir)
	if err != nil {
		return nil, err
	}
	// The generation's own directory too: Badger syncs it for its
	// MANIFEST, not for the log files it creates after.
	if err := errors.Join(syncDir(g.dir), syncDir(s.cfg.Dir)); err != nil {
		_ = db.Close()
		return nil, err
	}
	g.db = db
	return g, nil
}

// generationAhead is a generation being created in the background.
type generationAhead struct {
	done chan struct{}
	g    *generation
	err  error
}

// createAhead starts creating the generation after every one in gens, for
// the writer to start in once Open has recovered the rest.
func (s *Spool) createAhead(gens []*generation) *generationAhead {
	num := uint64(0)
	if len(gens) > 0 {
		num = gens[len(gens)-1].num + 1
	}
	s.nextGen = num + 1
	a := &generationAhead{done: make(chan struct{})}
	go func() {
		defer close(a.done)
		a.g, a.err = s.createGeneration(num)
	}()
	return a
}

func (a *generationAhead) wait() (*generation, error) {
	<-a.done
	return a.g, a.err
}

// discard closes the generation when Open fails: left empty, the next
// Open removes it.
func (a *generationAhead) discard() {
	if g, err := a.wait(); err == nil && g.db != nil {
		_ = g.db.Close()
		g.db = nil
	}
}

// startGeneration moves the writer to a new generation, holding events
// from s.next on: the spare if one is ready, else one opened now. Only the
// committer (or recover, before it runs) calls it.
func (s *Spool) startGeneration() error {
	s.genMu.Lock()
	g := s.spare
	s.spare = nil
	num := s.nextGen
	if g == nil {
		s.nextGen++
	}
	s.genMu.Unlock()
	select {
	case s.spareTaken <- struct{}{}:
	default:
	}
	if g == nil {
		var err error
		if g, err = s.createGeneration(num); err != nil {
			return err
		}
	}
	s.mu.Lock()
	g.first = s.next
	s.mu.Unlock()
	g.started = time.Now()
	g.refs = 1 // the writer's
	s.genMu.Lock()
	prev := s.active
	s.genMu.Unlock()
	if prev != nil && s.cfg.Sync == SyncInterval {
		// The background fsync follows the active generation only, so the
		// generation left is synced here, and before the writer moves on:
		// synced after, on a slow disk two background fsyncs of the new
		// generation could complete while the old one's last acknowledged
		// events were not yet on disk.
		if err := prev.db.Sync(); err != nil {
			s.log.Error("sync finished generation", "err", err)
		}
	}
	s.genMu.Lock()
	s.gens = append(s.gens, g)
	s.active = g
	s.activeBytes = 0
	s.genMu.Unlock()
	if prev != nil {
		prev.release()
		// Readers that keep up find its blocks in the recent cache; one
		// that needs it later reopens it read-only. Closing it is a
		// memtable flush and an fsync: not on the commit path.
		s.spawn(func() { prev.closeIfUnused(s.log) })
	}
	return nil
}

func (s *Spool) closeGenerations() error {
	s.genMu.Lock()
	defer s.genMu.Unlock()
	var first error
	for _, g := range s.gens {
		g.mu.Lock()
		if g.db != nil {
			if err := g.db.Close(); err != nil && first == nil {
				first = fmt.Errorf("close generation: %w", err)
			}
			g.db = nil
		}
		g.mu.Unlock()
	}
	return first
}
