package store

import (
	"encoding/base64"
	"fmt"
	"strings"
	"unicode/utf8"
)

// cursorVersion leads every cursor so that the format can change without
// misreading cursors that clients still hold.
const cursorVersion = 1

var cursorEncoding = base64.RawURLEncoding.Strict()

// CursorAfter returns the Scan cursor that resumes after key. Cursors name
// a key, not a position in one store, so a coordinator merging the scans of
// several stores can hand each of them the same cursor.
func CursorAfter(key string) string { return encodeCursor(key) }

// CursorKey returns the key a cursor from CursorAfter or Scan resumes
// after, so a coordinator can compare how far each node's page reached.
func CursorKey(cursor string) (string, error) { return decodeCursor(cursor, "") }

// encodeCursor returns the cursor that resumes a scan after key.
func encodeCursor(key string) string {
	b := make([]byte, 1+len(key))
	b[0] = cursorVersion
	copy(b[1:], key)
	return cursorEncoding.EncodeToString(b)
}

// decodeCursor returns the key a cursor resumes after. Only cursors that
// encodeCursor produced for a key with the given prefix are accepted, so a
// cursor decodes to exactly one key and encodes back to itself.
func decodeCursor(cursor, prefix string) (string, error) {
	// The decoder skips line breaks, which would let two cursors name one key.
	if strings.ContainsAny(cursor, "\r\n") {
		return "", fmt.Errorf("decode cursor: line break: %w", ErrInvalidCursor)
	}
	b, err := cursorEncoding.DecodeString(cursor)
	if err != nil {
		return "", fmt.Errorf("decode cursor: not base64: %w", ErrInvalidCursor)
	}
	if len(b) == 0 || b[0] != cursorVersion {
		return "", fmt.Errorf("decode cursor: unknown version: %w", ErrInvalidCursor)
	}
	key := string(b[1:])
	if !utf8.ValidString(key) {
		return "", fmt.Errorf("decode cursor: key is not utf-8: %w", ErrInvalidCursor)
	}
	if !strings.HasPrefix(key, prefix) {
		return "", fmt.Errorf("decode cursor: key outside prefix: %w", ErrInvalidCursor)
	}
	return key, nil
}
