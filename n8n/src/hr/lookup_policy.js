// lookup_policy(topic): find the HR policy that best matches a topic in a small static table.
// Answers 200 {found: true, policy: {...}} or {found: false, topic, available_topics}; 422 on bad input.
const POLICIES = [
  {
    policy_id: 'HR-POL-001',
    title: 'Paid time off',
    keywords: ['pto', 'paid time off', 'vacation', 'holiday', 'annual leave', 'time off', 'days off'],
    summary:
      'Full-time employees accrue 25 days of paid time off a year (about 2 days a month). ' +
      'Ask your manager at least two weeks ahead; up to 5 unused days carry over into the next year.',
    last_updated: '2026-01-15',
  },
  {
    policy_id: 'HR-POL-002',
    title: 'Sick leave',
    keywords: ['sick', 'illness', 'ill', 'doctor', 'medical', 'unwell'],
    summary:
      'Up to 10 paid sick days a year. Tell your manager before your shift starts; from the ' +
      'fourth day in a row a doctor\'s note is needed.',
    last_updated: '2025-11-01',
  },
  {
    policy_id: 'HR-POL-003',
    title: 'Remote work',
    keywords: ['remote', 'home', 'hybrid', 'wfh', 'work from home', 'telework'],
    summary:
      'Up to 3 days a week from home with your manager\'s agreement. Core hours are 10:00 to ' +
      '15:00 local time; the company pays up to 300 EUR once for home-office equipment.',
    last_updated: '2026-03-02',
  },
  {
    policy_id: 'HR-POL-004',
    title: 'Parental leave',
    keywords: ['parental', 'maternity', 'paternity', 'baby', 'adoption', 'family leave'],
    summary:
      '16 weeks fully paid for the primary caregiver and 6 weeks for the secondary caregiver, ' +
      'to be taken within 12 months of the birth or adoption. Tell HR 8 weeks ahead if you can.',
    last_updated: '2025-09-20',
  },
  {
    policy_id: 'HR-POL-005',
    title: 'Working hours and overtime',
    keywords: ['overtime', 'working hours', 'hours', 'schedule', 'shift', 'weekend'],
    summary:
      'The standard week is 40 hours. Overtime needs your manager\'s approval in advance and is ' +
      'paid at 1.5 times the hourly rate, or taken as time off in lieu within 3 months.',
    last_updated: '2026-02-10',
  },
];

const answer = (statusCode, body) => [{ json: { statusCode, body } }];
const { topic } = $input.first().json.arguments;
if (typeof topic !== 'string' || topic.trim().length === 0 || topic.length > 200) {
  return answer(422, { error: 'topic must be a non-empty text of at most 200 characters' });
}
const wanted = topic.toLowerCase();
let best = null;
let bestScore = 0;
for (const policy of POLICIES) {
  let score = wanted.includes(policy.title.toLowerCase()) ? 10 : 0;
  for (const keyword of policy.keywords) {
    if (new RegExp(`\\b${keyword}\\b`).test(wanted)) score += keyword.includes(' ') ? 3 : 2;
  }
  if (score > bestScore) {
    best = policy;
    bestScore = score;
  }
}
if (best === null) {
  return answer(200, {
    found: false,
    topic,
    available_topics: POLICIES.map((policy) => policy.title),
  });
}
const { keywords, ...policy } = best;
return answer(200, { found: true, topic, policy });
