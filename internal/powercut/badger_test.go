package powercut

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

func badgerOptions(dir string, sync bool) badger.Options {
	return badger.DefaultOptions(dir).
		WithLogger(nil).
		WithSyncWrites(sync).
		WithMetricsEnabled(false).
		WithValueThreshold(256).
		WithValueLogFileSize(16 << 20).
		WithMemTableSize(4 << 20).
		WithNumCompactors(2).
		WithNumGoroutines(2)
}

func badgerKey(i int) []byte { return fmt.Appendf(nil, "key-%06d", i) }

// badgerValue alternates values kept in the LSM tree with values in the
// value log.
func badgerValue(i int) []byte {
	n := 100
	if i%2 == 1 {
		n = 1000
	}
	return bytes.Repeat([]byte{byte('a' + i%26)}, n)
}

// badgerChild runs in a child process, as the spillway binary will: on the
// mount, killed by the cut. Its arguments are the directory, SyncWrites, whether to
// fsync the directory after opening, and how many keys to write. It prints
// "acked N" once each Update returned, then "done", and waits to be killed.
func badgerChild(args []string) int {
	if len(args) != 4 {
		fmt.Fprintf(os.Stderr, "want dir, sync, fsync-dir, keys; got %q\n", args)
		return 2
	}
	dir := args[0]
	n, err := strconv.Atoi(args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	db, err := badger.Open(badgerOptions(dir, args[1] == "true"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if args[2] == "true" {
		// Badger creates its first .vlog and .mem files without fsyncing the
		// directory; the spool must do this itself.
		d, err := os.Open(dir)
		if err == nil {
			err = errors.Join(d.Sync(), d.Close())
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	for i := range n {
		err := db.Update(func(txn *badger.Txn) error { return txn.Set(badgerKey(i), badgerValue(i)) })
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("acked %d\n", i)
	}
	fmt.Println("done")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// startBadgerChild runs badgerChild on dir until it has acked keys, and
// returns the acked keys and a kill function for Cut.
func startBadgerChild(t *testing.T, dir string, sync, fsyncDir bool, keys int) ([]int, func() error) {
	t.Helper()
	cmd := child("badger", dir, strconv.FormatBool(sync), strconv.FormatBool(fsyncDir), strconv.Itoa(keys))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	must(t, err)
	stdout, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	kill := func() error {
		defer stdin.Close()
		if err := cmd.Process.Kill(); err != nil {
			return err
		}
		err := cmd.Wait()
		var exit *exec.ExitError
		if errors.As(err, &exit) && !exit.Exited() {
			return nil // killed, as meant
		}
		return fmt.Errorf("badger child: %v, stderr: %s", err, stderr.String())
	}
	var acked []int
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		if line == "done" {
			return acked, kill
		}
		i, err := strconv.Atoi(strings.TrimPrefix(line, "acked "))
		if err != nil {
			t.Errorf("badger child said %q", line)
			continue
		}
		acked = append(acked, i)
	}
	err = cmd.Wait()
	t.Fatalf("badger child stopped after %d keys: %v, stderr: %s", len(acked), err, stderr.String())
	return nil, nil
}

// missingKeys opens Badger on dir and lists which of the keys 0 to n-1 it
// lacks or holds wrong. A child process does it: a failed badger.Open leaks
// goroutines.
func missingKeys(dir string, n int) ([]int, error) {
	out, err := child("badger-check", dir, strconv.Itoa(n)).Output()
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return nil, fmt.Errorf("%v: %s", err, bytes.TrimSpace(exit.Stderr))
		}
		return nil, err
	}
	var missing []int
	for _, f := range strings.Fields(string(out)) {
		i, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("badger-check said %q", out)
		}
		missing = append(missing, i)
	}
	return missing, nil
}

// badgerCheckChild prints which of the keys 0 to n-1 the database in dir
// lacks or holds wrong. Its arguments are dir and n.
func badgerCheckChild(args []string) int {
	if len(args) != 2 {
		fmt.Fprintf(os.Stderr, "want dir, keys; got %q\n", args)
		return 2
	}
	n, err := strconv.Atoi(args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	db, err := badger.Open(badgerOptions(args[0], true))
	if err != nil {
		fmt.Fprintf(os.Stderr, "open: %v\n", err)
		return 1
	}
	err = db.View(func(txn *badger.Txn) error {
		for i := range n {
			item, err := txn.Get(badgerKey(i))
			if errors.Is(err, badger.ErrKeyNotFound) {
				fmt.Println(i)
				continue
			}
			if err != nil {
				return err
			}
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			if !bytes.Equal(v, badgerValue(i)) {
				fmt.Println(i)
			}
		}
		return nil
	})
	if err := errors.Join(err, db.Close()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func TestBadgerOnTheMount(t *testing.T) {
	const keys = 100
	tests := []struct {
		scenario  string
		sync      bool
		mode      Mode
		wantsLoss bool
	}{
		{scenario: "with SyncWrites every acked write survives a clean cut", sync: true, mode: Clean},
		{scenario: "with SyncWrites every acked write survives a harsh cut", sync: true, mode: Harsh},
		{scenario: "without SyncWrites acked writes are lost", sync: false, mode: Clean, wantsLoss: true},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			fx := mountTree(t, 3, nil)
			acked, kill := startBadgerChild(t, fx.mnt, tt.sync, true, keys)
			stats, err := fx.fs.Cut(tt.mode, kill)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s cut: %+v", tt.mode, stats)
			missing, err := missingKeys(fx.dir, len(acked))
			switch {
			case tt.wantsLoss && err == nil && len(missing) == 0:
				t.Errorf("all %d acked writes survived; the cut should have lost the unsynced ones", len(acked))
			case tt.wantsLoss && err != nil:
				t.Logf("as expected, the database lost acked writes: it does not open: %v", err)
			case tt.wantsLoss:
				t.Logf("as expected, the database lost %d of %d acked writes", len(missing), len(acked))
			case err != nil:
				t.Errorf("reopen after the cut: %v", err)
			case len(missing) > 0:
				t.Errorf("lost %d of %d acked writes: %v", len(missing), len(acked), missing)
			}
		})
	}
}
