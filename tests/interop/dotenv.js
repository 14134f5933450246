// Prints what Node's `dotenv` reads from the file argv[2]: {"default": {...}, "fast": {...}}.
const fs = require('fs')
const dotenv = require('dotenv')
const src = fs.readFileSync(process.argv[2])
process.stdout.write(JSON.stringify({
  default: dotenv.parse(src),
  fast: dotenv.parse(src, { fast: true })
}))
