package forwarders

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spillwayhq/spillway/internal/testkit"
)

// TestFileDestinationFollowsRotation: once logrotate (or an operator)
// renames the file, the next batch goes to a new file under the name, not
// on into the renamed one, and nothing is lost or written twice.
func TestFileDestinationFollowsRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "events.ndjson")
	sp := newMemStore("f")
	startGroup(t, sp, nil, "f=file://"+path+"?"+testOpts)
	lines := func(p string) string {
		b, _ := os.ReadFile(p)
		return string(b)
	}

	appendEvents(t, sp, ev{id: "before-rotation", key: "wk-1"})
	testkit.Eventually(t, func() bool { return strings.Contains(lines(path), "before-rotation") }, "first event not written")
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	appendEvents(t, sp, ev{id: "after-rotation", key: "wk-1"})
	testkit.Eventually(t, func() bool { return strings.Contains(lines(path), "after-rotation") },
		"the event after the rotation is not in a new %s (the rotated file holds %q)", path, func() any { return lines(path + ".1") })
	if old, cur := lines(path+".1"), lines(path); strings.Count(old, "\n") != 1 || strings.Count(cur, "\n") != 1 ||
		!strings.Contains(old, "before-rotation") {
		t.Fatalf("rotated file %q, new file %q: want one event in each", old, cur)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("new file has mode %v, want 0600: events are personal data", fi.Mode().Perm())
	}
}
