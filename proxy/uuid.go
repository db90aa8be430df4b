package proxy

import "crypto/rand"

// appendUUID appends a random (version 4) UUID as a JSON string.
func (in *ingest) appendUUID(out []byte) []byte {
	if in.rndPos+16 > len(in.rnd) {
		_, _ = rand.Read(in.rnd[:]) // never fails (crypto/rand, Go 1.24+)
		in.rndPos = 0
	}
	u := in.rnd[in.rndPos : in.rndPos+16]
	in.rndPos += 16
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	out = append(out, '"')
	for i, c := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			out = append(out, '-')
		}
		out = append(out, hexDigits[c>>4], hexDigits[c&0xf])
	}
	return append(out, '"')
}
