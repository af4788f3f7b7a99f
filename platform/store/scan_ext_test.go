package store_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/fluxkv/fluxkv/platform/store"
)

// scanAll pages through every key with prefix and returns the keys in the
// order Scan returned them.
func scanAll(t testing.TB, s *store.Store, prefix string, limit int) []string {
	t.Helper()
	var keys []string
	cursor := ""
	for {
		page, err := s.Scan(store.ScanOptions{Prefix: prefix, Cursor: cursor, Limit: limit})
		if err != nil {
			t.Fatalf("scan %q after %d keys: %v", prefix, len(keys), err)
		}
		if limit > 0 && len(page.Entries) > limit {
			t.Fatalf("scan returned %d entries, limit %d", len(page.Entries), limit)
		}
		for _, e := range page.Entries {
			keys = append(keys, e.Key)
		}
		if page.NextCursor == "" {
			return keys
		}
		if len(page.Entries) == 0 {
			t.Fatalf("scan returned an empty page with a cursor")
		}
		cursor = page.NextCursor
	}
}

func TestScanOrder(t *testing.T) {
	t.Parallel()
	keys := []string{"", "a", "a\x00", "a\x00b", "ab", "abc", "b", "ba", "z", "é", "éa", "\U0001F600"}
	s := newStore(t, store.WithShards(4))
	for _, k := range keys {
		mustPut(t, s, k, "v-"+k, store.PutOptions{})
	}
	tests := []struct {
		prefix string
		want   []string
	}{
		{"", keys},
		{"a", []string{"a", "a\x00", "a\x00b", "ab", "abc"}},
		{"a\x00", []string{"a\x00", "a\x00b"}},
		{"ab", []string{"ab", "abc"}},
		{"é", []string{"é", "éa"}},
		{"\xc3", []string{"é", "éa"}}, // a prefix may end inside a rune
		{"c", nil},
		{"abcd", nil},
	}
	for i, tt := range tests {
		for _, limit := range []int{0, 1, 2, 3, 100} {
			if got := scanAll(t, s, tt.prefix, limit); !slices.Equal(got, tt.want) {
				t.Errorf("#%d (limit %d): got %q, want %q", i, limit, got, tt.want)
			}
		}
	}
	page, err := s.Scan(store.ScanOptions{Prefix: "ab"})
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range page.Entries {
		if string(e.Value) != "v-"+e.Key || e.ModRevision == 0 {
			t.Errorf("#%d: got entry %+v", i, e)
		}
	}
}

func TestScanPaging(t *testing.T) {
	t.Parallel()
	const n = 10_000
	r := rand.New(rand.NewPCG(7, 7))
	want := make([]string, n)
	for i := range want {
		want[i] = fmt.Sprintf("key/%c/%05d", 'a'+r.IntN(3), i)
	}
	s := newStore(t)
	for _, i := range r.Perm(n) {
		mustPut(t, s, want[i], "v", store.PutOptions{})
	}
	slices.Sort(want)

	tests := []struct {
		prefix string
		limit  int
	}{
		{"", 7},
		{"key/b/", 7},
		{"key/a/00", 1},
		{"key/c", 1000},
		{"", n},
		{"", n + 1},
	}
	for i, tt := range tests {
		var wantKeys []string
		for _, k := range want {
			if strings.HasPrefix(k, tt.prefix) {
				wantKeys = append(wantKeys, k)
			}
		}
		got := scanAll(t, s, tt.prefix, tt.limit)
		if !slices.Equal(got, wantKeys) {
			t.Errorf("#%d: got %d keys, want %d, in order, each once", i, len(got), len(wantKeys))
		}
	}
}

func TestScanLimit(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	for i := range store.DefaultScanLimit + 50 {
		mustPut(t, s, fmt.Sprintf("k%03d", i), "v", store.PutOptions{})
	}
	tests := []struct {
		limit      int
		want       int
		wantCursor bool
	}{
		{0, store.DefaultScanLimit, true},
		{-1, store.DefaultScanLimit, true},
		{149, 149, true},
		{150, 150, false}, // exact fit: nothing follows, so no cursor
		{151, 150, false},
	}
	for i, tt := range tests {
		page, err := s.Scan(store.ScanOptions{Limit: tt.limit})
		if err != nil {
			t.Fatalf("#%d: %v", i, err)
		}
		if got := len(page.Entries); got != tt.want {
			t.Errorf("#%d: got %v, want %v", i, got, tt.want)
		}
		if got := page.NextCursor != ""; got != tt.wantCursor {
			t.Errorf("#%d: got cursor %v, want %v", i, got, tt.wantCursor)
		}
	}
}

func TestScanSkipsExpired(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	s := newStore(t, store.WithClock(clock.Now), store.WithShards(2))
	var want []string
	for i := range 1000 {
		key := fmt.Sprintf("k%04d", i)
		// Long runs of expired keys, and an expired tail.
		if i%100 < 60 || i >= 950 {
			mustPut(t, s, key, "v", store.PutOptions{TTL: time.Second})
			continue
		}
		mustPut(t, s, key, "v", store.PutOptions{TTL: time.Hour})
		want = append(want, key)
	}
	clock.Advance(time.Second)
	for _, limit := range []int{1, 7, 40, 1000} {
		if got := scanAll(t, s, "", limit); !slices.Equal(got, want) {
			t.Errorf("limit %d: got %d keys, want %d", limit, len(got), len(want))
		}
	}
	if got := s.Len(); got != 1000 {
		t.Errorf("scan removed keys: got len %d, want 1000", got)
	}
}

func TestScanInvalidCursor(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	mustPut(t, s, "a1", "v", store.PutOptions{})
	mustPut(t, s, "a2", "v", store.PutOptions{})
	page, err := s.Scan(store.ScanOptions{Prefix: "a", Limit: 1})
	if err != nil || page.NextCursor == "" {
		t.Fatalf("scan: got %+v, %v", page, err)
	}
	tests := []struct {
		prefix string
		cursor string
	}{
		{"", "!!!!"}, // not base64
		{"", "AQ=="}, // padded
		{"", "AR"},   // non-canonical trailing bits
		{"", "AQ\n"}, // line break, which the decoder would skip
		{"", "AA"},   // version 0
		{"", "Ag"},   // version 2
		{"", "AP8"},  // version 0 with a key
		{"", store.EncodeCursor("a")[:1]},
		{"", "Af8"},                 // key "\xff": not utf-8
		{"b", page.NextCursor},      // key outside the prefix
		{"a1x", page.NextCursor},    // prefix longer than the key
		{"", page.NextCursor + "A"}, // a dangling base64 digit
	}
	for i, tt := range tests {
		if _, err := s.Scan(store.ScanOptions{Prefix: tt.prefix, Cursor: tt.cursor}); !errors.Is(err, store.ErrInvalidCursor) {
			t.Errorf("#%d: cursor %q: got %v, want %v", i, tt.cursor, err, store.ErrInvalidCursor)
		}
	}
	// The cursor stays valid for a shorter prefix.
	if _, err := s.Scan(store.ScanOptions{Cursor: page.NextCursor}); err != nil {
		t.Errorf("cursor without prefix: %v", err)
	}
}

func FuzzDecodeCursor(f *testing.F) {
	for _, seed := range []struct{ cursor, prefix string }{
		{"", ""},
		{"AQ", ""},
		{"AWE", "a"},
		{"AWE", "b"},
		{store.EncodeCursor("key/0001"), "key/"},
		{store.EncodeCursor("é"), "\xc3"},
		{"AQ\n", ""},
		{"AR", ""},
		{"Af8", ""},
		{"Ag", ""},
		{"!!", ""},
		{"AQ==", ""},
	} {
		f.Add(seed.cursor, seed.prefix)
	}
	f.Fuzz(func(t *testing.T, cursor, prefix string) {
		key, err := store.DecodeCursor(cursor, prefix)
		if err != nil {
			if !errors.Is(err, store.ErrInvalidCursor) {
				t.Fatalf("decode %q: got %v, want %v", cursor, err, store.ErrInvalidCursor)
			}
		} else {
			if !utf8.ValidString(key) || !strings.HasPrefix(key, prefix) {
				t.Fatalf("decode %q, prefix %q: accepted key %q", cursor, prefix, key)
			}
			if got := store.EncodeCursor(key); got != cursor {
				t.Fatalf("decode %q gave %q, which encodes to %q", cursor, key, got)
			}
		}

		// Any key the store accepts must survive the round trip.
		key = prefix + cursor
		if !utf8.ValidString(key) {
			return
		}
		got, err := store.DecodeCursor(store.EncodeCursor(key), prefix)
		if err != nil || got != key {
			t.Fatalf("round trip of %q: got %q, %v", key, got, err)
		}
	})
}
