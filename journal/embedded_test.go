package journal

import (
	"testing"
)

func openEmbedded(t testing.TB, dir string) *EmbeddedStore {
	t.Helper()
	s, err := OpenEmbedded(dir, discard())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestEmbeddedConformance(t *testing.T) {
	dir := t.TempDir()
	var current Store
	runConformance(t, harness{
		store: func(t *testing.T) Store {
			current = openEmbedded(t, dir)
			return current
		},
		peer: func(t *testing.T) Store { return current }, // one process owns the directory
		reopen: func(t *testing.T, s Store) Store {
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			current = openEmbedded(t, dir)
			return current
		},
	})
	if err := current.Close(); err != nil {
		t.Fatal(err)
	}
}
