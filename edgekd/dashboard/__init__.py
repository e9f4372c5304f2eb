"""The operator dashboard of `edgekd run --serve HOST:PORT`: a page, JSON, an MJPEG stream and Prometheus metrics,
served by edgekd itself with no outside assets (lines are often offline), read-only by construction."""
