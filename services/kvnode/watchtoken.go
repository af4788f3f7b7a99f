package kvnode

import (
	"encoding/base64"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
)

// errBadToken is the answer to a resume_token that Watch did not issue.
var errBadToken = errors.New("resume_token: not a token returned by Watch")

// watchPositions is where a watch stands on each node it covers: the
// highest revision of that node it has passed. It is what a resume_token
// encodes.
type watchPositions map[string]int64

// encodeToken returns the resume_token for p: the unpadded base64url form
// of a flux.kv.v1.WatchToken. Deterministic marshalling sorts the map, so
// equal positions always give equal tokens.
func encodeToken(p watchPositions) string {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(&kvv1.WatchToken{Revisions: p})
	if err != nil {
		// A map of strings to integers always marshals; a token that does
		// not decode would make the client fail on resume, so fail here.
		panic(fmt.Sprintf("marshal watch token: %v", err))
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodeToken parses a resume_token. The empty token is no positions.
func decodeToken(s string) (watchPositions, error) {
	if s == "" {
		return watchPositions{}, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, errBadToken
	}
	var tok kvv1.WatchToken
	if err := proto.Unmarshal(b, &tok); err != nil {
		return nil, errBadToken
	}
	p := watchPositions(tok.GetRevisions())
	if p == nil {
		p = watchPositions{}
	}
	for _, rev := range p {
		if rev < 0 {
			return nil, errBadToken
		}
	}
	return p, nil
}

// startAfter is where a watch resuming from p starts on node: after its
// entry, or from the node's first change when p does not name it (the node
// joined after the token was issued, so all its changes are new).
func (p watchPositions) startAfter(node string) int64 {
	return p[node]
}
