# syntax=docker/dockerfile:1
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
# go.mod replaces a module with the patched copy there.
COPY third_party ./third_party
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/spillway ./cmd/spillway \
 && mkdir -p /out/var/lib/spillway

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/spillway /usr/local/bin/spillway
COPY --from=build --chown=65532:65532 /out/var/lib/spillway /var/lib/spillway
USER 65532:65532
ENV SPILLWAY_LISTEN=0.0.0.0:8080 \
    SPILLWAY_SPOOL_DIR=/var/lib/spillway
VOLUME ["/var/lib/spillway"]
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/spillway"]
CMD ["run"]
