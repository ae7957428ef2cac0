// Starts @20minutes/s3rver 5.x for tests (the package ships no CLI entry point).
// Usage: node start.js DATA_DIR BUCKET... ; prints "listening on HOST:PORT" once ready.
const S3rver = require('@20minutes/s3rver')

const [directory, ...buckets] = process.argv.slice(2)
new S3rver({
  address: '127.0.0.1',
  port: 0,
  directory,
  silent: true,
  configureBuckets: buckets.map((name) => ({ name, configs: [] })),
})
  .run()
  .then(({ address, port }) => console.log(`listening on ${address}:${port}`))
