"""Drives StreamGate with tuspy, the independent tus client, for the interop tests.

usage: tus_upload.py ENDPOINT FILE STORE --token T [--stop-at N] [--chunk N]

Uploads FILE (with Upload-Checksum on every chunk) and stores the upload URL in STORE, tuspy's
own URL storage: a second process with the same STORE resumes the upload instead of starting a
new one. With --stop-at the process exits after that many bytes, like a client that was closed.
Prints the upload URL on the last line.
"""
import argparse
import sys

from tusclient import client
from tusclient.storage import filestorage


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("file")
    parser.add_argument("store")
    parser.add_argument("--stop-at", type=int, default=None)
    parser.add_argument("--chunk", type=int, default=256 * 1024)
    parser.add_argument("--token", required=True, help="session token, sent as a Bearer header")
    args = parser.parse_args()

    storage = filestorage.FileStorage(args.store)
    uploader = client.TusClient(args.endpoint, headers={"Authorization": f"Bearer {args.token}"}).uploader(
        file_path=args.file,
        chunk_size=args.chunk,
        metadata={"filename": "interop.mp4", "title": "Interop clip", "tags": "tus,interop"},
        store_url=True,
        url_storage=storage,
        upload_checksum=True,
        retries=0,
    )
    resumed_from = uploader.offset
    uploader.upload(stop_at=args.stop_at)
    print(f"resumed_from={resumed_from} offset={uploader.offset}")
    print(uploader.url)
    storage.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
